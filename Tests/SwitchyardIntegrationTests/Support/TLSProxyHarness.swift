import Foundation
import Logging
import NIOCore
import NIOPosix
import SwitchyardTLS

@testable import Switchyard

/// A tenant of a ``TLSProxyHarness``: its domains, backends and, optionally, its own certificate.
struct TLSTenant: Sendable {
    var name: String
    var domains: [String]
    var backends: [SocketAddress]
    var certificate: TestCertificates.Pair?
}

/// A balancer running in the test process with one HTTPS listener on an ephemeral loopback port, its certificates
/// loaded the way `switchyard serve` loads them (``CertificateStore/load(configuration:)``).
final class TLSProxyHarness: Sendable {
    let server: ProxyServer
    let group: MultiThreadedEventLoopGroup
    let port: Int

    private init(server: ProxyServer, group: MultiThreadedEventLoopGroup, port: Int) {
        self.server = server
        self.group = group
        self.port = port
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// Starts a balancer serving `defaultCertificate` (the `tls:` files) and `tenants` on HTTPS only.
    static func start(
        defaultCertificate: TestCertificates.Pair,
        tenants: [TLSTenant],
        workers: Int = 2,
        timeouts: Configuration.Timeouts = .init()
    ) async throws -> TLSProxyHarness {
        let configuration = Configuration(
            listen: .init(https: [try SocketAddress(ipAddress: "127.0.0.1", port: 0)]),
            workers: workers,
            tls: .init(certificate: defaultCertificate.certificate, key: defaultCertificate.key),
            tenants: tenants.map { tenant in
                TenantConfiguration(
                    name: tenant.name,
                    domains: tenant.domains,
                    backends: tenant.backends,
                    tls: tenant.certificate.map { .init(certificate: $0.certificate, key: $0.key) }
                )
            },
            timeouts: timeouts,
            accessLog: false
        )
        guard let store = try CertificateStore.load(configuration: configuration) else {
            throw Failure(description: "CertificateStore.load returned no store for a configuration with tls")
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: workers)
        var logger = Logger(label: "switchyard.test")
        logger.logLevel = .critical
        let server = ProxyServer(
            configuration: configuration,
            group: group,
            routes: RouteSource(try RouteTable(configuration: configuration)),
            certificates: CertificateSource(store),
            logger: logger
        )
        do {
            try await server.start()
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
        let port = server.boundAddresses.first?.port ?? 0
        return TLSProxyHarness(server: server, group: group, port: port)
    }

    func stop() async {
        await server.shutdown()
        try? await group.shutdownGracefully()
    }
}

/// Runs `body` with a TLS balancer for `tenants`, and stops the balancer and `backends` afterwards, whether `body`
/// throws or not.
func withTLSProxy(
    defaultCertificate: TestCertificates.Pair,
    tenants: [TLSTenant],
    backends: [TestBackend],
    timeouts: Configuration.Timeouts = .init(),
    _ body: (TLSProxyHarness) async throws -> Void
) async throws {
    let harness: TLSProxyHarness
    do {
        harness = try await TLSProxyHarness.start(
            defaultCertificate: defaultCertificate,
            tenants: tenants,
            timeouts: timeouts
        )
    } catch {
        for backend in backends { await backend.stop() }
        throw error
    }
    do {
        try await body(harness)
    } catch {
        await harness.stop()
        for backend in backends { await backend.stop() }
        throw error
    }
    await harness.stop()
    for backend in backends { await backend.stop() }
}

/// The real TLS clients the tests drive: `openssl s_client` and `curl`.
enum TLSClient {
    /// Runs `executable`, feeding it `input` on standard input (end of file after it), at most `timeout` seconds.
    static func run(
        _ executable: String,
        _ arguments: [String],
        input: String = "",
        timeout: Double = 10
    ) throws -> ExternalProcess.Output {
        try ExternalProcess.run(executable, arguments, input: input, timeout: timeout)
    }

    /// `openssl s_client -connect 127.0.0.1:<port>` with `arguments`. It prints the session on stdout and errors
    /// (alerts received) on stderr.
    static func sClient(
        port: Int,
        _ arguments: [String],
        input: String = "",
        timeout: Double = 10
    ) throws -> ExternalProcess.Output {
        try run(
            "/usr/bin/openssl",
            ["s_client", "-connect", "127.0.0.1:\(port)"] + arguments,
            input: input,
            timeout: timeout
        )
    }

    /// The subject and subject alternative names of the first certificate in `text` (PEM), as `openssl x509`
    /// prints them.
    static func describeFirstCertificate(in text: String) throws -> String {
        guard let start = text.range(of: "-----BEGIN CERTIFICATE-----"),
            let end = text.range(of: "-----END CERTIFICATE-----", range: start.upperBound..<text.endIndex)
        else { return "" }
        let pem = String(text[start.lowerBound..<end.upperBound]) + "\n"
        let output = try run("/usr/bin/openssl", ["x509", "-noout", "-subject", "-ext", "subjectAltName"], input: pem)
        return output.stdout
    }
}
