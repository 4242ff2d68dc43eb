import Foundation
import Testing

@testable import Switchyard
@testable import SwitchyardTLS

/// The `tls:` policy keys: parsed into a ``TLSPolicy``, applied to every context, and a list OpenSSL rejects is
/// refused at load with the list named.
@Suite("TLS policy configuration")
struct TLSPolicyConfigurationTests {
    private static var certs: String {
        var path = #filePath
        for _ in 0..<3 {
            if let slash = path.lastIndex(of: "/") { path = String(path[..<slash]) }
        }
        return path + "/Certs"
    }

    private func yaml(_ extra: String) -> String {
        """
        listen:
          https: ["127.0.0.1:8443"]
        tls:
          certificate: \(Self.certs)/localhost.pem
          key: \(Self.certs)/localhost.key
        \(extra)
        """
    }

    @Test("defaults, and every key overridden")
    func parsing() throws {
        let defaults = try ConfigurationLoader.parse(yaml: yaml(""), file: "t.yaml")
        #expect(defaults.tlsPolicy == TLSPolicy())
        let custom = try ConfigurationLoader.parse(
            yaml: yaml(
                """
                  ciphers: ECDHE-ECDSA-AES256-GCM-SHA384
                  ciphersuites: TLS_AES_256_GCM_SHA384
                  groups: P-256
                  session_cache: 100
                  session_tickets: 2
                  ticket_key_rotation: 1h
                """
            ),
            file: "t.yaml"
        )
        #expect(custom.tlsPolicy.tls12Ciphers == "ECDHE-ECDSA-AES256-GCM-SHA384")
        #expect(custom.tlsPolicy.tls13Ciphersuites == "TLS_AES_256_GCM_SHA384")
        #expect(custom.tlsPolicy.groups == "P-256")
        #expect(custom.tlsPolicy.sessionCacheSize == 100)
        #expect(custom.tlsPolicy.ticketsPerHandshake == 2)
        #expect(custom.tlsPolicy.ticketKeyRotation == .hours(1))
        let store = try #require(try CertificateStore.load(configuration: custom))
        #expect(store.ticketKeys.rotationInterval == .seconds(3600))
    }

    @Test("a cipher list OpenSSL does not know is refused when the certificates load, naming the list")
    func invalidList() throws {
        let configuration = try ConfigurationLoader.parse(yaml: yaml("  ciphers: NO-SUCH-CIPHER\n"), file: "t.yaml")
        #expect {
            _ = try CertificateStore.load(configuration: configuration)
        } throws: { error in
            "\(error)".contains("invalid TLS 1.2 cipher list 'NO-SUCH-CIPHER'")
        }
    }
}
