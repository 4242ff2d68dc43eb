import ArgumentParser
import Foundation
import Switchyard

/// `switchyard reload`: the running balancer re-reads its configuration file, as on SIGHUP, and says how that went.
struct ReloadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reload",
        abstract: "Make a running balancer re-read its configuration file, as SIGHUP does.",
        discussion: """
            The balancer re-reads the file it was started with (--config only finds the admin socket). A file that \
            does not load is refused with its file, line, key and reason, and the running configuration is kept \
            (exit status 1).
            """
    )

    @OptionGroup var options: AdminOptions

    @Option(help: "Only reload if the configuration is still at this version (`status` shows it).")
    var ifMatch: Int64?

    @Flag(help: "Print the admin API's JSON.")
    var json = false

    /// `{"tenants": N, "version": V}`.
    private struct Answer: Decodable {
        var tenants: Int
        var version: Int64
    }

    func run() throws {
        let client = try options.client()
        let body: Data
        do {
            body = try client.post("/v1/reload", ifMatch: ifMatch)
        } catch {
            FileHandle.standardError.write(Data("switchyard: \(error)\n".utf8))
            throw ExitCode(1)
        }
        if json {
            FileHandle.standardOutput.write(body)
            print()
            return
        }
        guard let answer = try? JSONDecoder().decode(Answer.self, from: body) else {
            FileHandle.standardError.write(
                Data(
                    "switchyard: the admin API's answer is not a reload's: \(String(decoding: body, as: UTF8.self))\n"
                        .utf8
                )
            )
            throw ExitCode(1)
        }
        print("reloaded: \(answer.tenants) tenants (configuration version \(answer.version))")
    }
}
