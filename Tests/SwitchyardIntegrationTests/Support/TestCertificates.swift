import Foundation

/// Certificates made for a test run with the `openssl` command-line tool, in a temporary directory: a private CA
/// (ECDSA P-256) and leaf certificates it signs, ECDSA P-256 or RSA-2048, for any list of DNS names, valid or
/// already expired.
final class TestCertificates: Sendable {
    enum KeyType: Sendable {
        case ecdsaP256
        case rsa2048
    }

    /// A PEM certificate chain (leaf, then the CA) and the leaf's PEM private key.
    struct Pair: Sendable {
        var certificate: String
        var key: String
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    let directory: String
    /// The CA certificate, for clients' `--cacert`.
    let caCertificate: String
    private let caKey: String

    init() throws {
        directory = NSTemporaryDirectory() + "switchyard-certs-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        caKey = directory + "/ca.key"
        caCertificate = directory + "/ca.pem"
        try Self.openssl(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", caKey])
        try Self.openssl([
            "req", "-x509", "-new", "-key", caKey, "-sha256", "-days", "30", "-subj", "/CN=Switchyard test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-out", caCertificate,
        ])
    }

    /// A leaf certificate for `names` (subject alternative names; the first is also the common name), signed by
    /// the CA and written as `<file>.pem` (chain) and `<file>.key`.
    /// - Parameter expired: make it valid from now until yesterday, so it is already expired.
    func leaf(
        _ file: String,
        names: [String],
        keyType: KeyType = .ecdsaP256,
        expired: Bool = false
    ) throws -> Pair {
        let base = directory + "/" + file
        let key = base + ".key"
        let request = base + ".csr"
        let extensions = base + ".ext"
        let leaf = base + ".leaf.pem"
        let chain = base + ".pem"
        let newKey: [String]
        let keyUsage: String
        switch keyType {
        case .ecdsaP256:
            newKey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
            keyUsage = "digitalSignature"
        case .rsa2048:
            newKey = ["-newkey", "rsa:2048"]
            keyUsage = "digitalSignature,keyEncipherment"
        }
        try Self.openssl(
            ["req", "-new"] + newKey + [
                "-nodes", "-keyout", key, "-subj", "/CN=\(names.first ?? file)", "-out", request,
            ]
        )
        try """
        basicConstraints=critical,CA:FALSE
        keyUsage=critical,\(keyUsage)
        extendedKeyUsage=serverAuth
        subjectAltName=\(names.map { "DNS:\($0)" }.joined(separator: ","))

        """.write(toFile: extensions, atomically: true, encoding: .utf8)
        try Self.openssl([
            "x509", "-req", "-in", request, "-CA", caCertificate, "-CAkey", caKey,
            "-set_serial", "0x" + String(UInt64.random(in: 1...UInt64.max), radix: 16), "-sha256",
            // A negative validity ends the certificate before it starts: notAfter is yesterday.
            "-days", expired ? "-1" : "30", "-extfile", extensions, "-out", leaf,
        ])
        let leafText = try String(contentsOfFile: leaf, encoding: .utf8)
        let caText = try String(contentsOfFile: caCertificate, encoding: .utf8)
        try (leafText + caText).write(toFile: chain, atomically: true, encoding: .utf8)
        try? FileManager.default.removeItem(atPath: request)
        try? FileManager.default.removeItem(atPath: extensions)
        try? FileManager.default.removeItem(atPath: leaf)
        return Pair(certificate: chain, key: key)
    }

    /// A valid certificate for `names` paired with the key of another certificate.
    func mismatched(_ file: String, names: [String]) throws -> Pair {
        let certificate = try leaf(file, names: names)
        let other = try leaf(file + "-other", names: names)
        return Pair(certificate: certificate.certificate, key: other.key)
    }

    /// A file that is not PEM at all.
    func notPEM(_ file: String) throws -> String {
        let path = directory + "/" + file
        try Data("this is not a certificate\n\u{1}\u{2}\u{3}".utf8).write(to: URL(fileURLWithPath: path))
        return path
    }

    /// Deletes the directory and everything in it.
    func remove() {
        try? FileManager.default.removeItem(atPath: directory)
    }

    private static func openssl(_ arguments: [String]) throws {
        let output = try ExternalProcess.run("/usr/bin/openssl", arguments, timeout: 30)
        guard output.status == 0 else {
            throw Failure(description: "openssl \(arguments.joined(separator: " ")) failed: \(output.stderr)")
        }
    }
}
