import ArgumentParser
import Foundation
import NIOCore
import Switchyard

#if canImport(Glibc)
import Glibc
#endif

/// Where operator commands find the admin API: `--admin-url` with `--token-file` for the TCP listener, else the
/// socket of `--admin`, else `SWITCHYARD_ADMIN`, else the configuration's `admin.socket`.
struct AdminOptions: ParsableArguments {
    @Option(help: "The admin socket (default: $SWITCHYARD_ADMIN, else admin.socket of the configuration).")
    var admin: String?

    @Option(
        name: .customLong("admin-url"),
        help: "The admin API's TCP listener instead of the socket, e.g. http://127.0.0.1:9000 (with --token-file)."
    )
    var adminURL: String?

    @Option(help: "With --admin-url, a token file (mode 0600, as admin.token_file) whose first token to present.")
    var tokenFile: String?

    @Option(name: .shortAndLong, help: "The configuration file whose admin.socket to use.")
    var config: String = "Config/switchyard.yaml"

    func validate() throws {
        switch (adminURL, tokenFile) {
        case (_?, nil): throw ValidationError("--admin-url needs --token-file")
        case (nil, _?): throw ValidationError("--token-file is only used with --admin-url")
        default: break
        }
        if adminURL != nil, admin != nil {
            throw ValidationError("give --admin (the socket) or --admin-url (TCP), not both")
        }
    }

    var socketPath: String {
        if let admin { return admin }
        if let path = ProcessInfo.processInfo.environment["SWITCHYARD_ADMIN"], !path.isEmpty { return path }
        return (try? ConfigurationLoader.load(path: config))?.admin.socket ?? Configuration.Admin().socket
    }

    /// The client these options name. A URL or token file that does not work is printed and ends the command with
    /// status 1.
    func client() throws -> AdminClient {
        guard let adminURL, let tokenFile else { return AdminClient(path: socketPath) }
        do {
            let tokens = try AdminTokens.load(path: tokenFile)
            guard let token = tokens.firstToken else {
                throw AdminClient.Failure(description: "\(tokenFile): no token")
            }
            return try AdminClient(url: adminURL, token: token)
        } catch {
            FileHandle.standardError.write(Data("switchyard: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }
}

struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show tenants, backends and their health, connections and tunnels of a running balancer."
    )

    @OptionGroup var options: AdminOptions

    @Flag(help: "Print the admin API's JSON.")
    var json = false

    func run() throws {
        let client = try options.client()
        let body: Data
        do {
            body = try client.get("/v1/status")
        } catch {
            FileHandle.standardError.write(Data("switchyard: \(error)\n".utf8))
            throw ExitCode(1)
        }
        if json {
            FileHandle.standardOutput.write(body)
            print()
        } else {
            let report = try JSONDecoder().decode(StatusReport.self, from: body)
            print(report.text)
        }
    }
}

/// A minimal HTTP/1.1 client for the admin API: its unix socket, or its TCP listener with a bearer token.
struct AdminClient {
    /// Where the API is.
    enum Endpoint {
        case socket(path: String)
        case tcp(SocketAddress, url: String, token: String)
    }

    let endpoint: Endpoint

    init(path: String) {
        endpoint = .socket(path: path)
    }

    /// `url` is `http://HOST:PORT` with an IP literal host (the listener is on loopback), `token` what to present.
    init(url: String, token: String) throws {
        guard let parsed = URL(string: url), parsed.scheme == "http", var host = parsed.host, let port = parsed.port,
            parsed.path.isEmpty || parsed.path == "/"
        else {
            throw Failure(description: "--admin-url '\(url)' is not http://HOST:PORT (e.g. http://127.0.0.1:9000)")
        }
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard let address = try? SocketAddress(ipAddress: host, port: port) else {
            throw Failure(description: "--admin-url '\(url)': '\(host)' is not an IP address such as 127.0.0.1")
        }
        endpoint = .tcp(address, url: url, token: token)
    }

    /// The socket's path or the URL, for messages.
    private var name: String {
        switch endpoint {
        case .socket(let path): return path
        case .tcp(_, let url, _): return url
        }
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
        /// The admin API's HTTP status, when it answered.
        var status: Int? = nil
        /// The admin API's error code (`not_found`, `version_mismatch`…), when it answered one.
        var code: String? = nil
    }

    /// `{"error": {"code": "…", "message": "…"}}`, the API's error answers.
    private struct ErrorAnswer: Decodable {
        struct Detail: Decodable {
            var code: String
            var message: String
        }
        var error: Detail
    }

    /// `GET target`; returns the body of a 2xx answer.
    func get(_ target: String) throws -> Data {
        try send("GET", target)
    }

    /// `POST target` without a body, with `If-Match: "N"` when `ifMatch` is given; returns the body of a 2xx
    /// answer.
    func post(_ target: String, ifMatch: Int64? = nil) throws -> Data {
        try send("POST", target, ifMatch: ifMatch)
    }

    /// Sends `method target` with `body` (JSON or YAML) and `If-Match: "N"` when `ifMatch` is given; returns the
    /// body of a 2xx answer and throws the API's error message otherwise.
    func send(_ method: String, _ target: String, body: Data = Data(), ifMatch: Int64? = nil) throws -> Data {
        var fields = ifMatch.map { "If-Match: \"\($0)\"\r\n" } ?? ""
        let descriptor: Int32
        switch endpoint {
        case .socket(let path):
            guard let connected = AdminServer.connectUnixSocket(path) else {
                throw Failure(
                    description:
                        "cannot reach the balancer's admin socket \(path): \(String(cString: strerror(errno))) "
                        + "(is `switchyard serve` running? use --admin or SWITCHYARD_ADMIN)"
                )
            }
            descriptor = connected
        case .tcp(let address, let url, let token):
            guard let connected = Self.connect(to: address) else {
                throw Failure(
                    description: "cannot reach the balancer's admin API at \(url): \(String(cString: strerror(errno))) "
                        + "(is admin.listen set, and `switchyard serve` running?)"
                )
            }
            descriptor = connected
            fields += "Authorization: Bearer \(token)\r\n"
        }
        defer { close(descriptor) }
        // A balancer that accepts but never answers must not hang the operator's terminal (an apply of 10,000
        // tenants takes seconds, not minutes).
        var timeout = timeval(tv_sec: 60, tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let type = body.isEmpty ? "" : "Content-Type: application/json\r\n"
        let request =
            Array(
                "\(method) \(target) HTTP/1.1\r\nHost: switchyard\r\nContent-Length: \(body.count)\r\n\(type)\(fields)Connection: close\r\n\r\n"
                    .utf8
            ) + Array(body)
        var sent = 0
        while sent < request.count {
            let count = request.withUnsafeBytes { bytes in
                bytes.baseAddress.map { write(descriptor, $0 + sent, bytes.count - sent) } ?? -1
            }
            guard count > 0 else { throw Failure(description: "cannot send to \(name)") }
            sent += count
        }
        var response = Data()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            if count <= 0 { break }
            response.append(contentsOf: buffer[0..<count])
        }
        guard let split = response.range(of: Data("\r\n\r\n".utf8)) else {
            throw Failure(description: "no answer from \(name)")
        }
        let head = String(decoding: response[..<split.lowerBound], as: UTF8.self)
        let body = response[split.upperBound...]
        guard head.hasPrefix("HTTP/1.1 2") else {
            let status = head.split(separator: " ").dropFirst().first.flatMap { Int($0) }
            if let answer = try? JSONDecoder().decode(ErrorAnswer.self, from: body) {
                throw Failure(description: answer.error.message, status: status, code: answer.error.code)
            }
            throw Failure(description: "the admin API answered: \(head.split(separator: "\r\n").first ?? "")")
        }
        return body
    }

    /// A blocking TCP socket connected to `address`, or `nil` with `errno` set.
    private static func connect(to address: SocketAddress) -> Int32? {
        let descriptor = socket(address.protocol.rawValue, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { return nil }
        let connected = address.withSockAddr { Glibc.connect(descriptor, $0, socklen_t($1)) }
        guard connected == 0 else {
            let saved = errno
            close(descriptor)
            errno = saved
            return nil
        }
        return descriptor
    }
}
