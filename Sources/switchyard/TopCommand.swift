import ArgumentParser
import Foundation
import Switchyard

#if canImport(Glibc)
import Glibc
#endif

/// `switchyard top`: a live view of a running balancer's tenants, redrawn every second from `GET /v1/traffic`.
struct TopCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "top",
        abstract: "A live view of the tenants of a running balancer: requests/s, errors/s, p50/p99, connections.",
        discussion: """
            Keys: s changes the sort (requests, errors, latency, connections, name), q or Ctrl-C quits. Not on a \
            terminal (or with --once or --json) it prints one view of one second and exits.
            """
    )

    @OptionGroup var options: AdminOptions

    @Option(help: "The sort: requests, errors, latency, connections or name.")
    var sort: TrafficView.Sort = .requests

    @Option(help: "Seconds between redraws (and the interval of --once).")
    var interval: Double = 1

    @Flag(help: "Print one view and exit.")
    var once = false

    @Flag(help: "Print one view as JSON and exit.")
    var json = false

    func run() throws {
        let client = try options.client()
        let interval = max(0.2, interval)
        if once || json || isatty(STDOUT_FILENO) == 0 || isatty(STDIN_FILENO) == 0 {
            let first = try fetch(client)
            Thread.sleep(forTimeInterval: interval)
            let view = TrafficView(from: first, to: try fetch(client), sort: sort)
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                print(String(decoding: try encoder.encode(view.rows), as: UTF8.self))
            } else {
                print(view.lines(width: 200).joined(separator: "\n"))
            }
            return
        }
        try live(client, interval: interval)
    }

    private func fetch(_ client: AdminClient) throws -> TrafficReport {
        do {
            return try JSONDecoder().decode(TrafficReport.self, from: client.get("/v1/traffic"))
        } catch {
            FileHandle.standardError.write(Data("switchyard: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }

    /// Redraws until `q` or Ctrl-C, with the terminal in raw mode (restored on the way out).
    private func live(_ client: AdminClient, interval: Double) throws {
        let terminal = RawTerminal()
        defer { terminal.restore() }
        var sort = self.sort
        var previous = try fetch(client)
        var current = previous
        var lastFetch = Date()
        write("\u{1B}[?25l")
        defer { write("\u{1B}[?25h\n") }
        while true {
            let size = RawTerminal.size()
            let view = TrafficView(from: previous, to: current, sort: sort)
            let screen = view.lines(width: size.columns, height: size.rows - 1, title: "switchyard top \(Self.clock())")
            write("\u{1B}[H\u{1B}[2J" + screen.joined(separator: "\r\n"))
            let wait = max(0, interval - Date().timeIntervalSince(lastFetch))
            if let key = terminal.readKey(timeout: wait) {
                switch key {
                case UInt8(ascii: "q"), UInt8(ascii: "Q"), 3, 4:  // q, Ctrl-C, Ctrl-D
                    return
                case UInt8(ascii: "s"), UInt8(ascii: "S"):
                    sort = sort.next
                    continue
                default:
                    continue
                }
            }
            previous = current
            current = try fetch(client)
            lastFetch = Date()
        }
    }

    private func write(_ text: String) {
        FileHandle.standardOutput.write(Data(text.utf8))
    }

    private static func clock() -> String {
        let formatter = DateFormatter()
        formatter.dateFormat = "HH:mm:ss"
        return formatter.string(from: Date())
    }
}

extension TrafficView.Sort: ExpressibleByArgument {}

/// The controlling terminal in raw mode (no echo, keys one at a time, Ctrl-C as a key), put back by ``restore()``.
final class RawTerminal {
    private var saved = termios()
    private var active = false

    init() {
        guard tcgetattr(STDIN_FILENO, &saved) == 0 else { return }
        var raw = saved
        raw.c_lflag &= ~tcflag_t(ECHO | ICANON | ISIG)
        active = tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0
    }

    func restore() {
        guard active else { return }
        active = false
        tcsetattr(STDIN_FILENO, TCSANOW, &saved)
    }

    /// A key pressed within `timeout` seconds, if any.
    func readKey(timeout: Double) -> UInt8? {
        var descriptor = pollfd(fd: STDIN_FILENO, events: Int16(POLLIN), revents: 0)
        guard poll(&descriptor, 1, Int32(timeout * 1000)) > 0 else { return nil }
        var byte: UInt8 = 0
        return read(STDIN_FILENO, &byte, 1) == 1 ? byte : nil
    }

    /// The terminal's size; 24 × 80 when it cannot be read.
    static func size() -> (rows: Int, columns: Int) {
        var size = winsize()
        guard ioctl(STDOUT_FILENO, UInt(TIOCGWINSZ), &size) == 0, size.ws_row > 0 else { return (24, 80) }
        return (Int(size.ws_row), Int(size.ws_col))
    }
}
