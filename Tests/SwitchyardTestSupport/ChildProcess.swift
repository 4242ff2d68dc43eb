import Foundation
import Glibc
import NIOConcurrencyHelpers

/// A program the tests run (curl, openssl, Python, tmux, the `switchyard` binary), started with `posix_spawn` and
/// reaped with `waitpid`.
///
/// Not Foundation's `Process`: its `waitUntilExit()` was seen here to wait for ever for a child that had
/// already exited (a tmux client left a zombie that Foundation's run-loop child monitor never reaped), which
/// hung a whole CI run. Every child here also gets its own process group, so a program that starts others
/// (Python's Selenium starting chromedriver and Chromium) is stopped with all of them, and none of them is
/// left holding the test's pipes open.
public final class ChildProcess: Sendable {
    /// Where one of the child's standard streams goes.
    public enum Stream: Sendable {
        /// `/dev/null`.
        case null
        /// A pipe the test reads (output) or writes (input).
        case pipe
        /// A file, created if needed, appended to (output only).
        case file(String)
    }

    /// What a finished child did: its exit code, or 128 + the signal that ended it (as a shell reports it).
    public struct Output: Sendable {
        public var status: Int32
        public var stdout: String
        public var stderr: String

        public init(status: Int32, stdout: String, stderr: String) {
            self.status = status
            self.stdout = stdout
            self.stderr = stderr
        }
    }

    /// The child could not be started.
    public struct SpawnFailure: Error, CustomStringConvertible {
        public var description: String
    }

    public let pid: pid_t
    private let input: Int32?
    private let output: Int32?
    private let errors: Int32?
    /// The exit status once reaped, and whether the input pipe is still open.
    private let state = NIOLockedValueBox<(status: Int32?, inputOpen: Bool)>((nil, true))

    /// Starts `executable` (a path) with `arguments`; with `environment`, that is its whole environment, else it
    /// inherits the test's.
    public init(
        _ executable: String,
        _ arguments: [String],
        environment: [String: String]? = nil,
        stdin: Stream = .null,
        stdout: Stream = .pipe,
        stderr: Stream = .pipe
    ) throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }

        // The child's own process group, every signal at its default and none blocked: the test process ignores
        // SIGPIPE and its dispatch threads block signals, which a child would otherwise inherit.
        var defaults = sigset_t()
        sigfillset(&defaults)
        var unblocked = sigset_t()
        sigemptyset(&unblocked)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setsigmask(&attributes, &unblocked)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(
            &attributes,
            Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK)
        )

        // The "pipes" are Unix socket pairs made close-on-exec atomically (Glibc's pipe2 is not imported), so a
        // child that another test starts at the same moment never inherits them.
        var parentEnds: [Int32] = []
        var childEnds: [Int32] = []
        defer { for end in childEnds { close(end) } }
        func connect(_ stream: Stream, to descriptor: Int32, writing: Bool) throws -> Int32? {
            switch stream {
            case .null:
                posix_spawn_file_actions_addopen(&actions, descriptor, "/dev/null", writing ? O_WRONLY : O_RDONLY, 0)
                return nil
            case .file(let path):
                posix_spawn_file_actions_addopen(
                    &actions,
                    descriptor,
                    path,
                    O_WRONLY | O_CREAT | O_APPEND,
                    0o644
                )
                return nil
            case .pipe:
                var ends: [Int32] = [-1, -1]
                guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0, &ends) == 0 else {
                    throw SpawnFailure(description: "socketpair: \(String(cString: strerror(errno)))")
                }
                let (childEnd, parentEnd) = (ends[0], ends[1])
                childEnds.append(childEnd)
                parentEnds.append(parentEnd)
                posix_spawn_file_actions_adddup2(&actions, childEnd, descriptor)
                return parentEnd
            }
        }
        do {
            input = try connect(stdin, to: 0, writing: false)
            output = try connect(stdout, to: 1, writing: true)
            errors = try connect(stderr, to: 2, writing: true)
            // Nothing else of the test process reaches the child: not every descriptor here is close-on-exec (the
            // tests' raw client sockets are not), and a child holding another test's socket keeps that
            // connection open after the test closed it (a balancer under a descriptor limit then never gets
            // its descriptors back).
            guard Self.addCloseFrom(&actions, 3) == 0 else {
                throw SpawnFailure(
                    description: "posix_spawn_file_actions_addclosefrom_np: \(String(cString: strerror(errno)))"
                )
            }
        } catch {
            for end in parentEnds { close(end) }
            throw error
        }

        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for argument in argv { free(argument) } }
        let environmentLines = (environment ?? ProcessInfo.processInfo.environment).map { "\($0.key)=\($0.value)" }
        let envp = environmentLines.map { strdup($0) } + [nil]
        defer { for line in envp { free(line) } }
        var pid = pid_t()
        let result = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        guard result == 0 else {
            for end in parentEnds { close(end) }
            throw SpawnFailure(description: "posix_spawn \(executable): \(String(cString: strerror(result)))")
        }
        self.pid = pid
    }

    /// glibc's `posix_spawn_file_actions_addclosefrom_np` (2.34 and later), which its headers declare only for
    /// `_GNU_SOURCE` and so Swift does not import: looked up once by name. Without it (an older glibc) a spawn
    /// fails and says so rather than leak the test's descriptors into the child.
    private static let addCloseFrom: @Sendable (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32 = {
        typealias Function = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
        guard let symbol = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np") else {
            return { _, _ in
                errno = ENOSYS
                return -1
            }
        }
        let function = unsafeBitCast(symbol, to: Function.self)
        return { function($0, $1) }
    }()

    deinit {
        if isRunning {
            kill(-pid, SIGKILL)
            _ = wait(timeout: 5)
        }
        // The input pipe only if ``closeInput()`` has not closed it already: closing a number twice would
        // close whatever the process opened under it since (an event loop's epoll descriptor, say).
        if let input, state.withLockedValue({ $0.inputOpen }) { close(input) }
        for descriptor in [output, errors].compactMap({ $0 }) { close(descriptor) }
    }

    /// Runs `executable` to its end and returns what it printed, waiting at most `timeout` seconds: then its whole
    /// process group gets SIGTERM, and SIGKILL 3 s later. Output is read while it runs, so a large one cannot
    /// block it on a full pipe; `input` is written to its standard input, then end of file.
    public static func run(
        _ executable: String,
        _ arguments: [String],
        environment: [String: String]? = nil,
        input: String? = nil,
        timeout: Double = 60
    ) throws -> Output {
        let child = try ChildProcess(
            executable,
            arguments,
            environment: environment,
            stdin: input == nil ? .null : .pipe
        )
        if let input {
            // Inputs here are a request or a certificate, far below a pipe's capacity: the write cannot block.
            try child.write(input)
            child.closeInput()
        }
        return child.finish(timeout: timeout)
    }

    /// Reads the child's output until it exits (and its pipes close, or 2 s later if something it started still
    /// holds them) or `timeout` seconds pass, in which case its process group is stopped.
    public func finish(timeout: Double = 60) -> Output {
        let deadline = Date().addingTimeInterval(timeout)
        var collected: [Int32: Data] = [:]
        var open = [output, errors].compactMap { $0 }
        var exitedAt: Date?
        while !open.isEmpty {
            let now = Date()
            if exitedAt == nil, !isRunning { exitedAt = now }
            if let exitedAt, now.timeIntervalSince(exitedAt) > 2 { break }
            if now >= deadline {
                stop()
                break
            }
            var descriptors = open.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
            let ready = poll(&descriptors, nfds_t(descriptors.count), 50)
            guard ready > 0 else { continue }
            for descriptor in descriptors where descriptor.revents != 0 {
                var buffer = [UInt8](repeating: 0, count: 65536)
                let count = read(descriptor.fd, &buffer, buffer.count)
                if count > 0 {
                    collected[descriptor.fd, default: Data()].append(contentsOf: buffer[0..<count])
                } else if count == 0 || (errno != EINTR && errno != EAGAIN) {
                    open.removeAll { $0 == descriptor.fd }
                }
            }
        }
        let status = wait(timeout: max(deadline.timeIntervalSinceNow, 0)) ?? stopped()
        func text(_ descriptor: Int32?) -> String {
            descriptor.map { String(decoding: collected[$0] ?? Data(), as: UTF8.self) } ?? ""
        }
        return Output(status: status, stdout: text(output), stderr: text(errors))
    }

    /// Waits at most `timeout` seconds for the child to print something and returns what it printed so far on
    /// its standard output (empty if nothing came, or it closed it); ``finish(timeout:)`` returns only what
    /// follows.
    public func readSome(timeout: Double) -> String {
        guard let output else { return "" }
        var descriptor = pollfd(fd: output, events: Int16(POLLIN), revents: 0)
        guard poll(&descriptor, 1, Int32(timeout * 1000)) > 0 else { return "" }
        var buffer = [UInt8](repeating: 0, count: 65536)
        let count = read(output, &buffer, buffer.count)
        return count > 0 ? String(decoding: buffer[0..<count], as: UTF8.self) : ""
    }

    /// Writes `text` to the child's standard input (started with `stdin: .pipe`).
    public func write(_ text: String) throws {
        guard let input, state.withLockedValue({ $0.inputOpen }) else {
            throw SpawnFailure(description: "the child's standard input is not an open pipe")
        }
        var bytes = Array(text.utf8)[...]
        while !bytes.isEmpty {
            let written = bytes.withUnsafeBytes { Glibc.write(input, $0.baseAddress, $0.count) }
            if written < 0 {
                if errno == EINTR { continue }
                throw SpawnFailure(description: "write to the child: \(String(cString: strerror(errno)))")
            }
            bytes = bytes.dropFirst(written)
        }
    }

    /// Closes the child's standard input: it reads end of file.
    public func closeInput() {
        guard let input else { return }
        let wasOpen = state.withLockedValue { state in
            defer { state.inputOpen = false }
            return state.inputOpen
        }
        if wasOpen { close(input) }
    }

    /// Whether the child has not exited yet (reaping it if it has).
    public var isRunning: Bool {
        reap() == nil
    }

    /// Its exit status once it has exited: see ``Output/status``.
    public var exitStatus: Int32? {
        reap()
    }

    /// Waits for the child to exit, at most `timeout` seconds (for ever without); nil if it is still running.
    @discardableResult
    public func wait(timeout: Double? = nil) -> Int32? {
        let deadline = timeout.map { Date().addingTimeInterval($0) }
        while true {
            if let status = reap() { return status }
            if let deadline, Date() >= deadline { return nil }
            usleep(10_000)
        }
    }

    /// Sends `signal` to the child alone.
    public func signal(_ signal: Int32) {
        if isRunning { kill(pid, signal) }
    }

    /// Stops the child and everything it started: SIGTERM to its process group, SIGKILL 3 s later.
    public func stop() {
        guard isRunning else { return }
        kill(-pid, SIGTERM)
        if wait(timeout: 3) == nil {
            kill(-pid, SIGKILL)
            wait(timeout: 10)
        }
    }

    /// Stops a child that outlived its time; its status, or -1 if even SIGKILL did not end it.
    private func stopped() -> Int32 {
        stop()
        return exitStatus ?? -1
    }

    /// `waitpid` without blocking, under the lock, so the status is taken once and two threads never reap the
    /// same pid (a blocking one would hold the lock for as long as the child runs).
    private func reap() -> Int32? {
        state.withLockedValue { state in
            if let status = state.status { return status }
            var raw: Int32 = 0
            var result: pid_t
            repeat {
                result = waitpid(pid, &raw, WNOHANG)
            } while result < 0 && errno == EINTR
            guard result == pid else { return nil }
            // WIFEXITED / WEXITSTATUS / WTERMSIG, which Swift does not import as functions.
            let signal = raw & 0x7f
            state.status = signal == 0 ? (raw >> 8) & 0xff : 128 + signal
            return state.status
        }
    }
}
