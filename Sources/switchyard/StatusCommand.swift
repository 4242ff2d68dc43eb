import ArgumentParser
import Foundation
import Switchyard

/// Where operator commands find the admin socket: `--admin`, else `SWITCHYARD_ADMIN`, else the configuration's
/// `admin.socket`.
struct AdminOptions: ParsableArguments {
    @Option(help: "The admin socket (default: $SWITCHYARD_ADMIN, else admin.socket of the configuration).")
    var admin: String?

    @Option(name: .shortAndLong, help: "The configuration file whose admin.socket to use.")
    var config: String = "Config/switchyard.yaml"

    var socketPath: String {
        if let admin { return admin }
        if let path = ProcessInfo.processInfo.environment["SWITCHYARD_ADMIN"], !path.isEmpty { return path }
        return (try? ConfigurationLoader.load(path: config))?.admin.socket ?? Configuration.Admin().socket
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
        let path = options.socketPath
        let body: Data
        do {
            body = try AdminClient(path: path).get("/v1/status")
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

/// A minimal HTTP/1.1 client for the admin API's unix socket.
struct AdminClient {
    let path: String

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

    /// `GET target`; returns the body of a 200 answer.
    func get(_ target: String) throws -> Data {
        try request("GET", target)
    }

    /// `POST target` without a body, with `If-Match: "N"` when `ifMatch` is given; returns the body of a 200
    /// answer.
    func post(_ target: String, ifMatch: Int64? = nil) throws -> Data {
        try request("POST", target, fields: ifMatch.map { "If-Match: \"\($0)\"\r\n" } ?? "")
    }

    /// Sends one request; returns the body of a 200 answer and throws the API's error message otherwise.
    private func request(_ method: String, _ target: String, fields: String = "") throws -> Data {
        guard let descriptor = AdminServer.connectUnixSocket(path) else {
            throw Failure(
                description: "cannot reach the balancer's admin socket \(path): \(String(cString: strerror(errno))) "
                    + "(is `switchyard serve` running? use --admin or SWITCHYARD_ADMIN)"
            )
        }
        defer { close(descriptor) }
        // A balancer that accepts but never answers must not hang the operator's terminal.
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let request = Array(
            "\(method) \(target) HTTP/1.1\r\nHost: switchyard\r\nContent-Length: 0\r\n\(fields)Connection: close\r\n\r\n"
                .utf8
        )
        guard request.withUnsafeBytes({ write(descriptor, $0.baseAddress, $0.count) }) == request.count else {
            throw Failure(description: "cannot send to \(path)")
        }
        var response = Data()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            if count <= 0 { break }
            response.append(contentsOf: buffer[0..<count])
        }
        guard let split = response.range(of: Data("\r\n\r\n".utf8)) else {
            throw Failure(description: "no answer from \(path)")
        }
        let head = String(decoding: response[..<split.lowerBound], as: UTF8.self)
        let body = response[split.upperBound...]
        guard head.hasPrefix("HTTP/1.1 200") else {
            let status = head.split(separator: " ").dropFirst().first.flatMap { Int($0) }
            if let answer = try? JSONDecoder().decode(ErrorAnswer.self, from: body) {
                throw Failure(description: answer.error.message, status: status, code: answer.error.code)
            }
            throw Failure(description: "the admin API answered: \(head.split(separator: "\r\n").first ?? "")")
        }
        return body
    }
}
