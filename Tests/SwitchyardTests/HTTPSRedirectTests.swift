import NIOCore
import Testing

@testable import Switchyard

/// `https_redirect`: plain-HTTP requests to a tenant that asks for it get a 308 to the same host and target over
/// HTTPS, without reaching a backend; HTTPS requests and other tenants are proxied as usual.
@Suite("HTTPS redirect")
struct HTTPSRedirectTests {
    private func harness(scheme: StaticString, httpsPort: Int?) throws -> ProxyStateMachineHarness {
        let backend = Backend(address: try SocketAddress(ipAddress: "127.0.0.1", port: 9001))
        let routes = RouteSource(
            try RouteTable(tenants: [
                Tenant(name: "secure", domains: ["secure.test"], backends: [backend], httpsRedirect: true),
                Tenant(name: "plain", domains: ["plain.test"], backends: [backend]),
            ])
        )
        return ProxyStateMachineHarness(routes: routes, scheme: scheme, httpsPort: httpsPort)
    }

    @Test("a plain-HTTP request is redirected with its target, and the connection stays open")
    func redirects() throws {
        var h = try harness(scheme: "http", httpsPort: 8443)
        #expect(
            h.client("GET /cart?id=7 HTTP/1.1\r\nHost: Secure.Test:8080\r\n\r\n") == [
                "client HTTP/1.1 308 Permanent Redirect\r\nServer: switchyard\r\n"
                    + "Location: https://secure.test:8443/cart?id=7\r\nContent-Length: 0\r\n\r\n"
            ]
        )
        #expect(h.state == .idle)
    }

    @Test("port 443 is left out of the location; a request with a body is answered and the connection closed")
    func defaultPortAndBody() throws {
        var h = try harness(scheme: "http", httpsPort: 443)
        #expect(
            h.client("POST /pay HTTP/1.1\r\nHost: secure.test\r\nContent-Length: 3\r\n\r\nabc") == [
                "client HTTP/1.1 308 Permanent Redirect\r\nServer: switchyard\r\n"
                    + "Location: https://secure.test/pay\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                "close",
            ]
        )
    }

    @Test("HTTPS requests and tenants without https_redirect are proxied")
    func noRedirect() throws {
        var tls = try harness(scheme: "https", httpsPort: 8443)
        #expect(tls.client("GET / HTTP/1.1\r\nHost: secure.test\r\n\r\n") == ["acquire secure"])
        var plain = try harness(scheme: "http", httpsPort: 8443)
        #expect(plain.client("GET / HTTP/1.1\r\nHost: plain.test\r\n\r\n") == ["acquire plain"])
    }
}
