import SwitchyardTLS

/// The certificate a TLS connection was served, as far as routing cares: which hosts it covers.
///
/// A protocol so that the state machine stays free of OpenSSL and can be tested with any certificate shape.
protocol ServedCertificate: AnyObject {
    func covers(host: String) -> Bool
}

extension TLSContext: ServedCertificate {}
