import NIOCore
import Testing

@testable import Switchyard

/// `https_redirect`: plain-HTTP requests to a tenant that asks for it get a 308 to the same host and target over
/// HTTPS, without reaching a backend; HTTPS requests and other tenants are proxied as usual.
@Suite("HTTPS redirect")
struct HTTPSRedirectTests {
    private func machine(scheme: StaticString, httpsPort: Int?) throws -> ProxyStateMachine {
        let backend = Backend(address: try SocketAddress(ipAddress: "127.0.0.1", port: 9001))
        let routes = RouteSource(
            try RouteTable(tenants: [
                Tenant(name: "secure", domains: ["secure.test"], backends: [backend], httpsRedirect: true),
                Tenant(name: "plain", domains: ["plain.test"], backends: [backend]),
            ])
        )
        let settings = ProxyStateMachine.Settings(
            maximumHeadBytes: 8192,
            maximumHeaderCount: 64,
            clientHeaderTimeout: .seconds(10),
            keepAliveTimeout: .seconds(60),
            clientBodyTimeout: .seconds(20),
            upstreamResponseTimeout: .seconds(30),
            tunnelIdleTimeout: .seconds(300),
            client: .init(address: "192.0.2.1", scheme: scheme),
            accessLog: false,
            httpsPort: httpsPort
        )
        return ProxyStateMachine(settings: settings, routes: routes, now: .uptimeNanoseconds(1_000_000_000))
    }

    private func drain(_ machine: inout ProxyStateMachine) -> [String] {
        var rendered: [String] = []
        while let action = machine.popAction() {
            switch action {
            case .acquireUpstream(let tenant, _, _, _): rendered.append("acquire \(tenant.name)")
            case .writeClient(let buffer): rendered.append("client " + String(buffer: buffer))
            case .closeClient: rendered.append("close")
            default: rendered.append("other")
            }
        }
        return rendered
    }

    @Test("a plain-HTTP request is redirected with its target, and the connection stays open")
    func redirects() throws {
        var machine = try machine(scheme: "http", httpsPort: 8443)
        machine.clientRead(
            ByteBuffer(string: "GET /cart?id=7 HTTP/1.1\r\nHost: Secure.Test:8080\r\n\r\n"),
            now: .uptimeNanoseconds(1_000_000_000)
        )
        #expect(
            drain(&machine) == [
                "client HTTP/1.1 308 Permanent Redirect\r\nServer: switchyard\r\n"
                    + "Location: https://secure.test:8443/cart?id=7\r\nContent-Length: 0\r\n\r\n"
            ]
        )
        #expect(machine.state == .idle)
    }

    @Test("port 443 is left out of the location; a request with a body is answered and the connection closed")
    func defaultPortAndBody() throws {
        var machine = try machine(scheme: "http", httpsPort: 443)
        machine.clientRead(
            ByteBuffer(string: "POST /pay HTTP/1.1\r\nHost: secure.test\r\nContent-Length: 3\r\n\r\nabc"),
            now: .uptimeNanoseconds(1_000_000_000)
        )
        #expect(
            drain(&machine) == [
                "client HTTP/1.1 308 Permanent Redirect\r\nServer: switchyard\r\n"
                    + "Location: https://secure.test/pay\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                "close",
            ]
        )
    }

    @Test("HTTPS requests and tenants without https_redirect are proxied")
    func noRedirect() throws {
        var tls = try machine(scheme: "https", httpsPort: 8443)
        tls.clientRead(ByteBuffer(string: "GET / HTTP/1.1\r\nHost: secure.test\r\n\r\n"), now: .uptimeNanoseconds(1))
        #expect(drain(&tls) == ["acquire secure"])
        var plain = try machine(scheme: "http", httpsPort: 8443)
        plain.clientRead(ByteBuffer(string: "GET / HTTP/1.1\r\nHost: plain.test\r\n\r\n"), now: .uptimeNanoseconds(1))
        #expect(drain(&plain) == ["acquire plain"])
    }
}
