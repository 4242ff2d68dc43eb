import Foundation
import SwitchyardTestSupport

/// Runs real command-line clients (curl) and the built `switchyard` binary.
enum ExternalProcess {
    typealias Output = ChildProcess.Output

    /// Runs `executable` with `arguments` and waits for it, at most `timeout` seconds (then it and everything it
    /// started are stopped). With `input`, it is written to standard input, then end of file; without, standard
    /// input is empty.
    static func run(
        _ executable: String,
        _ arguments: [String],
        input: String? = nil,
        timeout: Double = 60
    ) throws -> Output {
        try ChildProcess.run(executable, arguments, input: input, timeout: timeout)
    }

    /// curl with `arguments`; `-s` and a hard time limit are added.
    static func curl(_ arguments: [String], timeout: Double = 60) throws -> Output {
        try run("/usr/bin/curl", ["-s", "--max-time", String(Int(timeout))] + arguments, timeout: timeout + 5)
    }

    /// The package's root directory, found from this file's path.
    static var packageRoot: String {
        var path = #filePath
        for _ in 0..<4 {
            if let slash = path.lastIndex(of: "/") { path = String(path[..<slash]) }
        }
        return path
    }

    /// The `switchyard` binary built alongside the tests.
    static var switchyardBinary: String {
        let candidates = [".build/debug/switchyard", ".build/release/switchyard"].map { packageRoot + "/" + $0 }
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) } ?? candidates[0]
    }

    /// A TCP port that was free a moment ago on 127.0.0.1.
    static func freePort() throws -> Int {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(descriptor) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, length) }
        }
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
        }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}

/// The `switchyard` binary running as a child process, stopped (SIGTERM, then SIGKILL) when done.
final class SwitchyardProcess {
    let process: ChildProcess
    let logPath: String
    /// The admin socket of this balancer.
    let adminPath: String
    /// Its state store (`SWITCHYARD_STATE`).
    let statePath: String

    /// - Parameters:
    ///   - descriptorLimit: `SOFT:HARD` open-file limits to run it under (through `prlimit`, which execs it, so
    ///     ``pid`` is still the balancer's).
    ///   - statePath: the state store to use, for a restart that must find what the previous process stored; a
    ///     new one of its own otherwise, so that tests running at once never share one.
    init(arguments: [String], descriptorLimit: String? = nil, statePath: String? = nil) throws {
        let executable: String
        let allArguments: [String]
        if let descriptorLimit {
            executable = "/usr/bin/prlimit"
            allArguments = ["--nofile=\(descriptorLimit)", ExternalProcess.switchyardBinary] + arguments
        } else {
            executable = ExternalProcess.switchyardBinary
            allArguments = arguments
        }
        // Each balancer gets its own admin socket, so tests running at once do not meet on the default one.
        adminPath = NSTemporaryDirectory() + "switchyard-admin-\(UUID().uuidString.prefix(8)).sock"
        self.statePath =
            statePath ?? NSTemporaryDirectory() + "switchyard-state-\(UUID().uuidString.prefix(8))/state.sqlite"
        var environment = ProcessInfo.processInfo.environment
        environment["SWITCHYARD_ADMIN"] = adminPath
        environment["SWITCHYARD_STATE"] = self.statePath
        logPath = NSTemporaryDirectory() + "switchyard-test-\(UUID().uuidString).log"
        process = try ChildProcess(
            executable,
            allArguments,
            environment: environment,
            stdout: .file(logPath),
            stderr: .file(logPath)
        )
    }

    var pid: Int32 {
        process.pid
    }

    var log: String {
        (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
    }

    /// Waits until `port` accepts connections or the process exits; at most `timeout` seconds.
    func waitUntilListening(port: Int, timeout: Double = 20) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline, process.isRunning {
            if (try? RawClient(port: port)) != nil { return true }
            usleep(50_000)
        }
        return false
    }

    /// Resident set size and its peak, in KiB, from /proc.
    func memory() -> (rss: Int, peak: Int) {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        func value(_ key: String) -> Int {
            guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix(key) }) else { return 0 }
            return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") ?? 0
        }
        return (value("VmRSS:"), value("VmHWM:"))
    }

    /// User and system CPU time used so far, in seconds, from /proc.
    func cpuSeconds() -> Double {
        let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
        // Fields after the command name (which may hold spaces), from field 3 on: utime and stime are 14 and 15.
        guard let end = stat.lastIndex(of: ")") else { return 0 }
        let fields = stat[stat.index(after: end)...].split(separator: " ")
        guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// Sends SIGTERM and waits for the exit; SIGKILL after `timeout` seconds. The state store is removed unless
    /// `keepingState` (for a restart on it).
    @discardableResult
    func stop(timeout: Double = 10, keepingState: Bool = false) -> Int32 {
        defer {
            // A database's URL names no file: the test drops its database itself.
            if !keepingState, !statePath.hasPrefix("postgres") {
                try? FileManager.default.removeItem(atPath: (statePath as NSString).deletingLastPathComponent)
            }
        }
        if let status = process.exitStatus { return status }
        kill(pid, SIGTERM)
        if process.wait(timeout: timeout) == nil {
            process.stop()
        }
        try? FileManager.default.removeItem(atPath: logPath)
        return process.exitStatus ?? -1
    }

    deinit {
        process.signal(SIGKILL)
    }
}

/// A balancer started as `switchyard serve` on a configuration written to a temporary file, listening on `port`.
/// Rewrite the file with ``rewrite(_:)`` and send SIGHUP to reload; ``stop()`` removes the file.
final class ServedBalancer {
    let process: SwitchyardProcess
    let configurationPath: String
    let port: Int

    struct NotListening: Error, CustomStringConvertible {
        var description: String
    }

    /// Starts it and waits until `port` accepts connections.
    ///
    /// - Parameters:
    ///   - statePath: the state store, to start again on what an earlier balancer stored; a new one otherwise.
    ///   - configurationPath: the file to write the configuration to; a new one otherwise.
    init(_ configuration: String, port: Int, statePath: String? = nil, configurationPath: String? = nil) throws {
        self.port = port
        self.configurationPath = configurationPath ?? NSTemporaryDirectory() + "switchyard-\(UUID().uuidString).yaml"
        try configuration.write(toFile: self.configurationPath, atomically: true, encoding: .utf8)
        process = try SwitchyardProcess(arguments: ["serve", "--config", self.configurationPath], statePath: statePath)
        guard process.waitUntilListening(port: port) else {
            _ = process.stop()
            try? FileManager.default.removeItem(atPath: self.configurationPath)
            throw NotListening(description: "the balancer did not listen on \(port):\n\(process.log)")
        }
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    var url: String {
        "http://127.0.0.1:\(port)"
    }

    /// Replaces the configuration file (send SIGHUP to reload it).
    func rewrite(_ configuration: String) throws {
        try configuration.write(toFile: configurationPath, atomically: true, encoding: .utf8)
    }

    /// Runs an operator command (`status`, `backends drain …`) against this balancer's admin socket.
    func admin(_ arguments: [String]) throws -> ExternalProcess.Output {
        try ExternalProcess.run(ExternalProcess.switchyardBinary, arguments + ["--admin", process.adminPath])
    }

    /// Stops it (SIGTERM) and removes its files; `keepingState` keeps the state store and the configuration file
    /// for a balancer started again on them.
    @discardableResult
    func stop(keepingState: Bool = false) -> Int32 {
        defer { if !keepingState { try? FileManager.default.removeItem(atPath: configurationPath) } }
        return process.stop(keepingState: keepingState)
    }
}

/// Runs blocking work (waiting for a process or reading its pipe to the end) on a thread of its own: an async test
/// that blocks one of the concurrency pool's few threads (two on a two-core machine) for seconds starves every other
/// test's tasks, health checkers included.
func offThePool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Result { try body() }) }.start()
    }
}
