import Foundation
import NIOCore
import SwitchyardTLS
import Testing

@testable import Switchyard

/// HTTPS termination seen from real clients (`openssl s_client`, `curl`, Python's `ssl`, raw sockets): certificate
/// selection by SNI, protocol versions and ciphers, ALPN, 421 for domain fronting, plain HTTP and broken handshakes
/// on the TLS port, the handshake timeout, session resumption, refusal of unusable certificates, and memory staying
/// flat over thousands of handshakes.
///
/// Certificates come from a private CA made with the `openssl` tool for this run (``TestCertificates``). Most tests
/// run the balancer in-process (``TLSProxyHarness``); the leak check runs the `switchyard` binary.
@Suite("TLS termination", .serialized)
struct TLSIntegrationTests {
    /// The certificates every test uses, made once per run.
    private final class Fixture: Sendable {
        static let shared = Result { try Fixture() }

        let certificates: TestCertificates
        /// `default.test` (ECDSA): the `tls:` certificate, served without SNI or for names no tenant covers.
        let fallback: TestCertificates.Pair
        /// `a.test` only (ECDSA P-256).
        let a: TestCertificates.Pair
        /// `b.test` only (RSA-2048).
        let b: TestCertificates.Pair
        /// `*.wild.test` (ECDSA P-256).
        let wildcard: TestCertificates.Pair

        private init() throws {
            certificates = try TestCertificates()
            fallback = try certificates.leaf("default", names: ["default.test"])
            a = try certificates.leaf("a", names: ["a.test"])
            b = try certificates.leaf("b", names: ["b.test"], keyType: .rsa2048)
            wildcard = try certificates.leaf("wild", names: ["*.wild.test"])
            // Swift Testing has no suite-level teardown: the directory goes when the test process exits.
            atexit {
                if case .success(let fixture) = Fixture.shared { fixture.certificates.remove() }
            }
        }
    }

    private static let body = "hello from the backend"

    /// Runs `body` with a backend and an in-process TLS balancer with four tenants: `a.test`, `b.test` and
    /// `*.wild.test` with their own certificates, and `plain.test` without one (it is served the default).
    private func withBalancer(
        timeouts: Configuration.Timeouts = .init(),
        _ body: (TLSProxyHarness, TestBackend, Fixture) async throws -> Void
    ) async throws {
        let fixture = try Fixture.shared.get()
        let backend = try await TestBackend.start { head in
            .respond(body: "\(Self.body) for \(head.headers["Host"].first ?? "?")")
        }
        let tenants = [
            TLSTenant(name: "a", domains: ["a.test"], backends: [backend.address], certificate: fixture.a),
            TLSTenant(name: "b", domains: ["b.test"], backends: [backend.address], certificate: fixture.b),
            TLSTenant(
                name: "wild",
                domains: ["*.wild.test"],
                backends: [backend.address],
                certificate: fixture.wildcard
            ),
            TLSTenant(name: "plain", domains: ["plain.test"], backends: [backend.address], certificate: nil),
        ]
        try await withTLSProxy(
            defaultCertificate: fixture.fallback,
            tenants: tenants,
            backends: [backend],
            timeouts: timeouts
        ) { harness in
            try await body(harness, backend, fixture)
        }
    }

    /// `curl` to `https://<host>:<port><path>` resolved to 127.0.0.1, verifying against the test CA.
    private func curl(
        _ host: String,
        port: Int,
        path: String = "/",
        fixture: Fixture,
        extra: [String] = []
    ) throws -> ExternalProcess.Output {
        try ExternalProcess.curl(
            [
                "--cacert", fixture.certificates.caCertificate, "--resolve", "\(host):\(port):127.0.0.1",
            ] + extra + ["https://\(host):\(port)\(path)"],
            timeout: 10
        )
    }

    // MARK: - Certificates and protocol

    @Test("SNI selects the tenant's own certificate; an unknown name or no SNI gets the default certificate")
    func sniSelectsCertificate() async throws {
        try await withBalancer { harness, _, _ in
            // (s_client arguments, expected subject common name, expected subject alternative name)
            let cases: [([String], String, String)] = [
                (["-servername", "a.test"], "a.test", "DNS:a.test"),
                (["-servername", "A.TEST"], "a.test", "DNS:a.test"),
                (["-servername", "b.test"], "b.test", "DNS:b.test"),
                (["-servername", "x.wild.test"], "*.wild.test", "DNS:*.wild.test"),
                (["-servername", "plain.test"], "default.test", "DNS:default.test"),
                (["-servername", "unknown.test"], "default.test", "DNS:default.test"),
                (["-servername", "deep.x.wild.test"], "default.test", "DNS:default.test"),
                (["-noservername"], "default.test", "DNS:default.test"),
            ]
            for (arguments, commonName, alternativeName) in cases {
                let output = try TLSClient.sClient(port: harness.port, arguments + ["-showcerts"])
                let certificate = try TLSClient.describeFirstCertificate(in: output.stdout)
                let lines = certificate.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
                #expect(
                    lines.contains("subject=CN = \(commonName)"),
                    "\(arguments): \(certificate)\n\(output.stdout)\n\(output.stderr)"
                )
                #expect(lines.contains(alternativeName), "\(arguments): \(certificate)")
            }
            // b.test's certificate has an RSA key, the others ECDSA: both kinds are served.
            let rsa = try TLSClient.sClient(port: harness.port, ["-servername", "b.test"])
            #expect(rsa.stdout.contains("Server public key is 2048 bit"), "\(rsa.stdout)")
            let ecdsa = try TLSClient.sClient(port: harness.port, ["-servername", "a.test"])
            #expect(ecdsa.stdout.contains("Server public key is 256 bit"), "\(ecdsa.stdout)")
        }
    }

    @Test("TLS 1.3 and 1.2 handshake; TLS 1.1 and 1.0 are refused by the server with a protocol_version alert")
    func protocolVersions() async throws {
        try await withBalancer { harness, _, _ in
            for (flag, version) in [("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")] {
                let output = try TLSClient.sClient(port: harness.port, ["-servername", "a.test", flag])
                #expect(output.stdout.contains("New, \(version), Cipher is "), "\(flag): \(output.stdout)")
                #expect(output.status == 0, "\(flag): \(output.stderr)")
            }
            // SECLEVEL=0 so that this client really offers the old versions. `-msg` shows what went each way: the
            // ClientHello the client sent and the alert it received, which proves the refusal is the server's.
            // (s_client prints "Protocol  : TLSv1.1" in its session summary even after a failed handshake, so
            // that line proves nothing either way; "Cipher is (NONE)" does.)
            for (flag, record) in [("-tls1_1", "TLS 1.1"), ("-tls1", "TLS 1.0")] {
                let output = try TLSClient.sClient(
                    port: harness.port,
                    ["-servername", "a.test", flag, "-cipher", "DEFAULT@SECLEVEL=0", "-msg"]
                )
                #expect(output.stdout.contains(">>> \(record), Handshake"), "\(flag): \(output.stdout)")
                #expect(output.stdout.contains("ClientHello"), "\(flag): \(output.stdout)")
                #expect(output.stdout.contains("<<< "), "\(flag): \(output.stdout)")
                #expect(output.stdout.contains("Alert [length 0002], fatal protocol_version"), "\(output.stdout)")
                #expect(output.stderr.contains("SSL alert number 70"), "\(flag): \(output.stderr)")
                #expect(output.stdout.contains("Cipher is (NONE)"), "\(flag): \(output.stdout)")
                #expect(!output.stdout.contains("New, TLSv1"), "\(flag): \(output.stdout)")
                #expect(output.status != 0)
            }
        }
    }

    @Test("TLS 1.2 without ECDHE and AEAD is refused with handshake_failure; ECDHE with AES-GCM is accepted")
    func tls12Ciphers() async throws {
        try await withBalancer { harness, _, _ in
            // (SNI, the only cipher offered): CBC suites (SHA-1 and SHA-256 MACs), with and without ECDHE, and GCM
            // with static RSA key exchange (AEAD, but no forward secrecy).
            let refused = [
                ("a.test", "AES128-SHA:@SECLEVEL=0"),
                ("a.test", "ECDHE-ECDSA-AES128-SHA"),
                ("b.test", "ECDHE-RSA-AES128-SHA"),
                ("b.test", "AES128-GCM-SHA256"),
                ("b.test", "AES256-SHA256"),
            ]
            for (name, cipher) in refused {
                let output = try TLSClient.sClient(
                    port: harness.port,
                    ["-servername", name, "-tls1_2", "-cipher", cipher, "-msg"]
                )
                #expect(output.stdout.contains(">>> TLS 1.2, Handshake"), "\(cipher): \(output.stdout)")
                #expect(output.stdout.contains("fatal handshake_failure"), "\(cipher): \(output.stdout)")
                #expect(output.stderr.contains("SSL alert number 40"), "\(cipher): \(output.stderr)")
                #expect(output.stdout.contains("Cipher is (NONE)"), "\(cipher): \(output.stdout)")
                #expect(output.status != 0)
            }
            let accepted = [("a.test", "ECDHE-ECDSA-AES128-GCM-SHA256"), ("b.test", "ECDHE-RSA-AES128-GCM-SHA256")]
            for (name, cipher) in accepted {
                let output = try TLSClient.sClient(
                    port: harness.port,
                    ["-servername", name, "-tls1_2", "-cipher", cipher]
                )
                #expect(output.stdout.contains("New, TLSv1.2, Cipher is \(cipher)"), "\(cipher): \(output.stdout)")
                #expect(output.status == 0, "\(cipher): \(output.stderr)")
            }
        }
    }

    // MARK: - HTTP over TLS

    @Test("curl verifies the tenant certificate, negotiates http/1.1 by ALPN and reaches the backend, which sees https")
    func curlThroughToBackend() async throws {
        try await withBalancer { harness, backend, fixture in
            // curl offers h2 and http/1.1; the balancer must pick http/1.1. A client's own X-Forwarded-Proto must
            // not survive.
            let output = try curl(
                "a.test",
                port: harness.port,
                path: "/through",
                fixture: fixture,
                extra: ["-v", "-H", "X-Forwarded-Proto: http"]
            )
            #expect(output.status == 0, "\(output.stderr)")
            #expect(output.stdout == "\(Self.body) for a.test:\(harness.port)")
            #expect(output.stderr.contains("ALPN: server accepted http/1.1"), "\(output.stderr)")
            #expect(output.stderr.contains("SSL certificate verify ok"), "\(output.stderr)")
            let request = backend.requests.last { $0.head.uri == "/through" }
            #expect(request?.head.headers["X-Forwarded-Proto"] == ["https"], "\(String(describing: request?.head))")

            let rsa = try curl("b.test", port: harness.port, fixture: fixture, extra: ["--http1.1"])
            #expect(rsa.status == 0, "\(rsa.stderr)")
            #expect(rsa.stdout == "\(Self.body) for b.test:\(harness.port)")
        }
    }

    /// One request over `openssl s_client -quiet` with SNI `serverName`; returns what the server sent and how long
    /// until it closed (or s_client was stopped after `timeout`).
    private func request(
        port: Int,
        serverName: String,
        host: String,
        path: String = "/",
        close: Bool,
        timeout: Double = 5
    ) throws -> (response: String, seconds: Double) {
        let start = Date()
        let input = "GET \(path) HTTP/1.1\r\nHost: \(host)\r\n\(close ? "Connection: close\r\n" : "")\r\n"
        let output = try TLSClient.sClient(
            port: port,
            ["-servername", serverName, "-quiet"],
            input: input,
            timeout: timeout
        )
        return (output.stdout, Date().timeIntervalSince(start))
    }

    @Test("421 when the SNI certificate does not cover Host; SNI and Host may differ under one wildcard certificate")
    func misdirectedRequest() async throws {
        try await withBalancer { harness, backend, _ in
            // a.test's certificate does not cover b.test, another tenant: domain fronting. The balancer answers
            // itself and closes (the request is sent without Connection: close, so s_client returns early only if
            // the server closes).
            let fronted = try request(
                port: harness.port,
                serverName: "a.test",
                host: "b.test",
                path: "/fronted",
                close: false
            )
            #expect(fronted.response.hasPrefix("HTTP/1.1 421 Misdirected Request\r\n"), "\(fronted.response)")
            #expect(fronted.seconds < 4, "the connection stayed open after the 421")
            let toPlain = try request(
                port: harness.port,
                serverName: "a.test",
                host: "plain.test",
                path: "/fronted",
                close: true
            )
            #expect(toPlain.response.hasPrefix("HTTP/1.1 421 Misdirected Request\r\n"), "\(toPlain.response)")
            #expect(!backend.requests.contains { $0.head.uri == "/fronted" }, "a misdirected request was forwarded")

            // One *.wild.test certificate covers both names: legitimate connection reuse.
            let wild = try request(port: harness.port, serverName: "x.wild.test", host: "y.wild.test", close: true)
            #expect(wild.response.hasPrefix("HTTP/1.1 200 OK\r\n"), "\(wild.response)")
            #expect(wild.response.hasSuffix("\(Self.body) for y.wild.test"), "\(wild.response)")
            // The certificate's own name, with a port in Host.
            let same = try request(
                port: harness.port,
                serverName: "a.test",
                host: "a.test:\(harness.port)",
                close: true
            )
            #expect(same.response.hasPrefix("HTTP/1.1 200 OK\r\n"), "\(same.response)")
            // plain.test has no certificate of its own and is served the default one, for its own name: forwarded.
            let plain = try request(port: harness.port, serverName: "plain.test", host: "plain.test", close: true)
            #expect(plain.response.hasPrefix("HTTP/1.1 200 OK\r\n"), "\(plain.response)")
        }
    }

    // MARK: - Not TLS, broken TLS, silence

    @Test("plain HTTP on the TLS port gets a plain-text 400 and the connection is closed")
    func plainHTTPOnTLSPort() async throws {
        try await withBalancer { harness, backend, _ in
            let client = try RawClient(port: harness.port)
            try client.send("GET /plain HTTP/1.1\r\nHost: a.test\r\n\r\n")
            let (text, closed) = client.receive(timeout: 3)
            #expect(text.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), "\(text)")
            #expect(text.contains("https"), "\(text)")
            #expect(closed)
            #expect(!backend.requests.contains { $0.head.uri == "/plain" })
        }
    }

    @Test("garbage, a truncated ClientHello and a silent client are closed (the silent one after tls_handshake)")
    func brokenHandshakes() async throws {
        let timeouts = Configuration.Timeouts(tlsHandshake: .milliseconds(500))
        try await withBalancer(timeouts: timeouts) { harness, _, fixture in
            // A handshake record header, then junk.
            do {
                let client = try RawClient(port: harness.port)
                var bytes: [UInt8] = [0x16, 0xFF, 0xFE, 0xFD] + Array(repeating: 0x41, count: 60)
                try client.send(bytes: &bytes)
                let (_, closed) = client.receive(timeout: 2)
                #expect(closed, "garbage after 0x16 left the connection open")
            }
            // Binary junk that is neither TLS nor HTTP.
            do {
                let client = try RawClient(port: harness.port)
                var bytes: [UInt8] = [0x00, 0x01, 0x02, 0x03, 0xFF, 0x80]
                try client.send(bytes: &bytes)
                let (text, closed) = client.receive(timeout: 2)
                #expect(closed, "binary junk left the connection open")
                #expect(text.isEmpty)
            }
            // The first 43 bytes of a ClientHello announcing 512, then the client half-closes: nothing more can
            // come, the server closes.
            let truncatedHello: [UInt8] =
                [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03, 0x03]
                + (0..<32).map { _ in UInt8.random(in: 0...255) }
            do {
                let client = try RawClient(port: harness.port)
                var bytes = truncatedHello
                try client.send(bytes: &bytes)
                client.shutdownOutput()
                let (_, closed) = client.receive(timeout: 2)
                #expect(closed, "a truncated ClientHello followed by EOF left the connection open")
            }
            // The same, and then the client closes outright.
            do {
                let client = try RawClient(port: harness.port)
                var bytes = truncatedHello
                try client.send(bytes: &bytes)
            }
            // A truncated ClientHello and then silence: the handshake timeout closes it.
            do {
                let client = try RawClient(port: harness.port)
                var bytes = truncatedHello
                try client.send(bytes: &bytes)
                let start = Date()
                let (_, closed) = client.receive(timeout: 3)
                let elapsed = Date().timeIntervalSince(start)
                #expect(closed, "a stalled handshake was not closed")
                #expect(elapsed < 2, "a stalled handshake was closed after \(elapsed) s, tls_handshake is 0.5 s")
            }
            // A client that connects and sends nothing.
            do {
                let client = try RawClient(port: harness.port)
                let start = Date()
                let (_, closed) = client.receive(timeout: 3)
                let elapsed = Date().timeIntervalSince(start)
                #expect(closed, "a silent client was not closed")
                #expect(elapsed > 0.3, "a silent client was closed after \(elapsed) s, before tls_handshake (0.5 s)")
                #expect(elapsed < 2, "a silent client was closed after \(elapsed) s, tls_handshake is 0.5 s")
            }
            // The server is still serving.
            let output = try curl("a.test", port: harness.port, fixture: fixture)
            #expect(output.status == 0, "\(output.stderr)")
            #expect(output.stdout == "\(Self.body) for a.test:\(harness.port)")
        }
    }

    // MARK: - Resumption

    @Test(
        "sessions resume: TLS 1.3 tickets, TLS 1.2 tickets and TLS 1.2 session IDs",
        arguments: [
            ["-tls1_3"], ["-tls1_2"], ["-tls1_2", "-no_ticket"],
        ]
    )
    func sessionResumption(_ mode: [String]) async throws {
        try await withBalancer { harness, _, fixture in
            let session = fixture.certificates.directory + "/session-\(UUID().uuidString).pem"
            defer { try? FileManager.default.removeItem(atPath: session) }
            // A request with Connection: close, and -ign_eof: s_client reads until the server closes, so it has
            // received the TLS 1.3 ticket (sent after the handshake) before it saves the session.
            let input = "GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"
            let first = try TLSClient.sClient(
                port: harness.port,
                ["-servername", "a.test", "-sess_out", session, "-ign_eof"] + mode,
                input: input
            )
            #expect(first.stdout.contains("\nNew, TLSv1."), "\(mode): \(first.stdout)")
            #expect(first.stdout.contains("HTTP/1.1 200 OK"), "\(mode): \(first.stdout)")
            #expect(FileManager.default.fileExists(atPath: session), "\(mode): no session saved: \(first.stderr)")

            let second = try TLSClient.sClient(
                port: harness.port,
                ["-servername", "a.test", "-sess_in", session, "-ign_eof"] + mode,
                input: input
            )
            #expect(second.stdout.contains("\nReused, TLSv1."), "\(mode): not resumed:\n\(second.stdout)")
            // The resumed connection still knows its certificate: a.test is not answered 421.
            #expect(second.stdout.contains("HTTP/1.1 200 OK"), "\(mode): \(second.stdout)")
        }
    }

    // MARK: - Unusable certificates

    /// The error `load` throws, or `nil`.
    private func loadError(_ load: () throws(TLSError) -> Void) -> TLSError? {
        do {
            try load()
            return nil
        } catch {
            return error
        }
    }

    @Test("a key not matching, an expired certificate, a non-PEM file and a missing file are refused at load, clearly")
    func unusableCertificates() throws {
        let fixture = try Fixture.shared.get()
        let certificates = fixture.certificates
        let mismatched = try certificates.mismatched("mismatched", names: ["m.test"])
        let expired = try certificates.leaf("expired", names: ["e.test"], expired: true)
        let garbage = try certificates.notPEM("garbage.pem")
        let missing = certificates.directory + "/missing.pem"

        // Valid files load, with their names.
        let rsa = try TLSContext(certificatePath: fixture.b.certificate, keyPath: fixture.b.key)
        #expect(rsa.names == ["b.test"])
        let wildcard = try TLSContext(certificatePath: fixture.wildcard.certificate, keyPath: fixture.wildcard.key)
        #expect(wildcard.names == ["*.wild.test"])
        #expect(wildcard.covers(host: "x.wild.test"))
        #expect(!wildcard.covers(host: "wild.test"))
        #expect(!wildcard.covers(host: "a.x.wild.test"))

        // (certificate, key, what the message must say)
        let cases: [(String, String, [String])] = [
            // Same key type: OpenSSL itself refuses the key while loading it ("key values mismatch").
            (mismatched.certificate, mismatched.key, [mismatched.key, "match"]),
            // An RSA key for an ECDSA certificate loads, and the explicit check refuses the pair.
            (fixture.a.certificate, fixture.b.key, [fixture.b.key, fixture.a.certificate, "does not match"]),
            (expired.certificate, expired.key, [expired.certificate, "expired"]),
            (garbage, fixture.a.key, [garbage, "cannot read the certificate chain"]),
            (fixture.a.certificate, garbage, [garbage, "cannot read the private key"]),
            (missing, fixture.a.key, [missing, "cannot read the certificate chain"]),
            (fixture.a.certificate, missing, [missing, "cannot read the private key"]),
        ]
        for (certificate, key, phrases) in cases {
            let error = loadError { () throws(TLSError) in
                _ = try TLSContext(certificatePath: certificate, keyPath: key)
            }
            #expect(error != nil, "\(certificate) + \(key) loaded")
            for phrase in phrases {
                #expect(error?.description.contains(phrase) == true, "\(String(describing: error))")
            }
        }
        // A missing file is named as such, from OpenSSL's own words.
        let missingError = loadError { () throws(TLSError) in
            _ = try TLSContext(certificatePath: missing, keyPath: fixture.a.key)
        }
        #expect(missingError?.description.contains("No such file") == true, "\(String(describing: missingError))")

        // Through the configuration, as `serve` and `reload` load them: the tenant is named too.
        func configuration(tenantCertificate: TestCertificates.Pair) throws -> Configuration {
            Configuration(
                tls: .init(certificate: fixture.fallback.certificate, key: fixture.fallback.key),
                tenants: [
                    TenantConfiguration(
                        name: "shop",
                        domains: ["shop.test"],
                        backends: [try SocketAddress(ipAddress: "127.0.0.1", port: 9)],
                        tls: .init(certificate: tenantCertificate.certificate, key: tenantCertificate.key)
                    )
                ]
            )
        }
        let valid = try CertificateStore.load(configuration: configuration(tenantCertificate: fixture.a))
        #expect(valid?.context(forServerName: "a.test").names == ["a.test"])
        #expect(valid?.context(forServerName: "shop.test").names == ["default.test"])
        for (broken, path) in [(expired, expired.certificate), (mismatched, mismatched.key)] {
            let config = try configuration(tenantCertificate: broken)
            let error = loadError { () throws(TLSError) in _ = try CertificateStore.load(configuration: config) }
            #expect(error?.description.hasPrefix("tenant shop: ") == true, "\(String(describing: error))")
            #expect(error?.description.contains(path) == true, "\(String(describing: error))")
        }
        var brokenDefault = try configuration(tenantCertificate: fixture.a)
        brokenDefault.tls = .init(certificate: expired.certificate, key: expired.key)
        let defaultError = loadError { () throws(TLSError) in
            _ = try CertificateStore.load(configuration: brokenDefault)
        }
        #expect(defaultError?.description.contains(expired.certificate) == true, "\(String(describing: defaultError))")
        #expect(defaultError?.description.contains("expired") == true, "\(String(describing: defaultError))")
    }

    // MARK: - Memory

    /// Python (standard library only): `handshakes` sequential connections, each a full TLS handshake (no session
    /// reuse), one `GET` with `Connection: close`, read to the end, close. Stops early after `budget` seconds.
    /// Prints "<connections> <answered 200>".
    private static let handshakeScript = """
        import socket, ssl, sys, time
        port, name, handshakes, budget = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(sys.argv[5])
        request = ("GET / HTTP/1.1\\r\\nHost: %s\\r\\nConnection: close\\r\\n\\r\\n" % name).encode()
        done = ok = 0
        start = time.monotonic()
        while done < handshakes and time.monotonic() - start < budget:
            with socket.create_connection(("127.0.0.1", port)) as raw:
                with context.wrap_socket(raw, server_hostname=name) as tls:
                    tls.sendall(request)
                    response = b""
                    while True:
                        try:
                            chunk = tls.recv(65536)
                        except (ssl.SSLError, ConnectionResetError):
                            break
                        if not chunk:
                            break
                        response += chunk
            done += 1
            if response.startswith(b"HTTP/1.1 200 "):
                ok += 1
        print(done, ok)
        """

    @Test("the switchyard binary's memory stays flat over thousands of full TLS handshakes")
    func handshakesDoNotLeak() async throws {
        let fixture = try Fixture.shared.get()
        let backend = try await TestBackend.start { _ in .respond(body: Self.body) }
        let port = try ExternalProcess.freePort()
        let directory = NSTemporaryDirectory() + "switchyard-tls-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let config = directory + "/switchyard.yaml"
        try """
        listen:
          https: ["127.0.0.1:\(port)"]
        workers: 2
        access_log: false
        state: \(directory)/state.sqlite
        admin:
          socket: \(directory)/admin.sock
        tls:
          certificate: \(fixture.fallback.certificate)
          key: \(fixture.fallback.key)
        tenants:
          - name: a
            domains: ["a.test"]
            backends: ["127.0.0.1:\(backend.port)"]
            certificate: \(fixture.a.certificate)
            key: \(fixture.a.key)
        """.write(toFile: config, atomically: true, encoding: .utf8)
        let script = directory + "/handshakes.py"
        try Self.handshakeScript.write(toFile: script, atomically: true, encoding: .utf8)
        let balancer = try SwitchyardProcess(arguments: ["serve", "--config", config, "--log-level", "warning"])
        defer {
            balancer.stop()
            try? FileManager.default.removeItem(atPath: directory)
        }
        #expect(balancer.waitUntilListening(port: port), "\(balancer.log)")

        func handshakes(_ count: Int, budget: Double) throws -> (done: Int, ok: Int) {
            let output = try ExternalProcess.run(
                "/usr/bin/python3",
                [script, String(port), "a.test", String(count), String(budget), fixture.certificates.caCertificate],
                timeout: budget + 15
            )
            let numbers = output.stdout.split(whereSeparator: \.isWhitespace).compactMap { Int($0) }
            guard output.status == 0, numbers.count == 2 else {
                Issue.record("handshake script failed (\(output.status)): \(output.stdout) \(output.stderr)")
                return (0, 0)
            }
            return (numbers[0], numbers[1])
        }

        // The baseline includes whatever the first connections allocate for good (pools, caches, arenas).
        let warmUp = try handshakes(500, budget: 30)
        #expect(warmUp.done == 500 && warmUp.ok == 500, "warm-up: \(warmUp)")
        let before = balancer.memory().rss
        // 10,000 in all is the goal, but a debug build on two cores (client, balancer and backend share them)
        // manages about 200 handshakes a second (8,400 measured), so the rest is bounded to 38 s; at least 3,000
        // must fit. Each connection is a full handshake: Python does not reuse sessions unless asked to.
        let rest = try handshakes(9_500, budget: 38)
        let after = balancer.memory().rss
        let total = warmUp.done + rest.done
        print("TLS leak check: \(total) handshakes; RSS after 500: \(before) KiB, after \(total): \(after) KiB")
        #expect(total >= 3_000, "only \(total) handshakes in the time budget")
        #expect(rest.ok == rest.done, "\(rest.done - rest.ok) of \(rest.done) requests not answered 200")
        #expect(
            after - before <= 8 * 1024,
            "RSS grew by \(after - before) KiB over \(rest.done) handshakes (\(before) → \(after) KiB)"
        )
        #expect(balancer.process.isRunning, "\(balancer.log)")
        await backend.stop()
    }
}
