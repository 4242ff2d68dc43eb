import ArgumentParser
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// What every command that changes or reads the control plane shares: the admin endpoint and `--json`.
struct ManagementOptions: ParsableArguments {
    @OptionGroup var admin: AdminOptions

    @Flag(help: "Print the admin API's JSON instead of a table.")
    var json = false
}

/// What every command that changes the control plane shares: ``ManagementOptions``, `--if-match` and `--wait`.
struct ChangeOptions: ParsableArguments {
    @OptionGroup var management: ManagementOptions

    @Option(help: "Only change if the configuration is still at this version (`status` shows it).")
    var ifMatch: Int64?

    @Flag(help: "Return once every live node of the fleet serves the change (at most --wait-timeout).")
    var wait = false

    @Option(help: "How long --wait waits, in seconds (at most 60).")
    var waitTimeout: Double = 10
}

/// Calling the admin API for a command: errors become one line on standard error and exit status 1.
enum AdminCall {
    /// `method target` with a JSON `body`; answers the decoded JSON object. With `--json`, the caller prints `raw`.
    static func perform(
        _ options: ManagementOptions,
        _ method: String,
        _ target: String,
        body: Any? = nil,
        rawBody: Data? = nil,
        ifMatch: Int64? = nil
    ) throws -> (object: [String: Any], raw: Data) {
        let client = try options.admin.client()
        var data = rawBody ?? Data()
        if let body {
            data = (try? JSONSerialization.data(withJSONObject: body, options: [.withoutEscapingSlashes])) ?? Data()
        }
        let answer: Data
        do {
            answer = try client.send(method, target, body: data, ifMatch: ifMatch)
        } catch {
            fail("\(error)")
        }
        let object = (try? JSONSerialization.jsonObject(with: answer)) as? [String: Any] ?? [:]
        return (object, answer)
    }

    /// Calls the API and prints its answer: the JSON as it came with `--json`, else what `describe` makes of it.
    static func show(
        _ options: ManagementOptions,
        _ method: String,
        _ target: String,
        body: Any? = nil,
        rawBody: Data? = nil,
        ifMatch: Int64? = nil,
        _ describe: ([String: Any]) -> String
    ) throws {
        let (object, raw) = try perform(options, method, target, body: body, rawBody: rawBody, ifMatch: ifMatch)
        if options.json {
            printJSON(raw)
        } else {
            print(describe(object))
        }
    }

    /// ``show(_:_:_:body:rawBody:ifMatch:_:)`` for a change, conditional on the command's `--if-match`.
    static func change(
        _ options: ChangeOptions,
        _ method: String,
        _ target: String,
        body: Any? = nil,
        rawBody: Data? = nil,
        _ describe: ([String: Any]) -> String
    ) throws {
        guard options.wait else {
            try show(
                options.management,
                method,
                target,
                body: body,
                rawBody: rawBody,
                ifMatch: options.ifMatch,
                describe
            )
            return
        }
        let waiting = target + (target.contains("?") ? "&" : "?") + fleetWaitQuery(timeout: options.waitTimeout)
        let (object, raw) = try perform(
            options.management,
            method,
            waiting,
            body: body,
            rawBody: rawBody,
            ifMatch: options.ifMatch
        )
        if options.management.json {
            printJSON(raw)
        } else {
            print(describe(object))
        }
        reportFleet(object, waitTimeout: options.waitTimeout, quiet: options.management.json)
    }

    /// The query that makes a change's answer wait until the fleet serves it.
    static func fleetWaitQuery(timeout: Double) -> String {
        "wait=fleet&wait_timeout=\(timeout)"
    }

    /// Ends the command with status 1 when the answer of a change that waited for the fleet (`object`) says some
    /// live node did not serve it in time; else says how many nodes do, unless `quiet`.
    static func reportFleet(_ object: [String: Any], waitTimeout: Double, quiet: Bool) {
        let fleet = object["fleet"] as? [String: Any] ?? [:]
        let live = fleet["live"] as? Int ?? 0
        let applied = fleet["applied"] as? Int ?? 0
        let version = fleet["version"] as? Int ?? 0
        if let error = fleet["error"] as? String {
            fail("the change is made, but the fleet could not be read: \(error)")
        }
        let behind = fleet["behind"] as? [String] ?? []
        guard behind.isEmpty else {
            fail(
                "the change is made (version \(version)), but after \(waitTimeout)s only \(applied) of \(live) "
                    + "live nodes serve it; behind: \(behind.joined(separator: ", "))"
            )
        }
        if !quiet {
            print("live on \(applied) of \(live) nodes at version \(version)")
        }
    }

    /// Prints `message` as the command's one line on standard error.
    static func printError(_ message: String) {
        FileHandle.standardError.write(Data("switchyard: \(message)\n".utf8))
    }

    /// Prints `message` as the command's one line on standard error and exits with status 1.
    static func fail(_ message: String) -> Never {
        printError(message)
        exit(1)
    }

    /// A path segment, percent-encoded.
    static func segment(_ text: String) -> String {
        let allowed = CharacterSet.urlPathAllowed.subtracting(CharacterSet(charactersIn: "/?#%"))
        return text.addingPercentEncoding(withAllowedCharacters: allowed) ?? text
    }

    /// The API's JSON as it came, for `--json`.
    static func printJSON(_ data: Data) {
        FileHandle.standardOutput.write(data)
        print()
    }

    /// Rows as aligned columns, the first row a header.
    static func table(_ rows: [[String]]) -> String {
        guard let width = rows.map(\.count).max() else { return "" }
        var widths = [Int](repeating: 0, count: width)
        for row in rows {
            for (index, cell) in row.enumerated() {
                widths[index] = max(widths[index], Colour.visibleLength(cell))
            }
        }
        return rows.map { row in
            row.enumerated().map { index, cell in
                index == row.count - 1
                    ? cell : cell + String(repeating: " ", count: widths[index] - Colour.visibleLength(cell) + 2)
            }.joined()
        }.joined(separator: "\n")
    }
}

/// States in colour when standard output is a terminal (and `NO_COLOR` is not set).
enum Colour {
    static let enabled: Bool = isatty(1) == 1 && ProcessInfo.processInfo.environment["NO_COLOR"] == nil

    static func state(_ text: String) -> String {
        paint(text, as: text)
    }

    /// `text` in the colour of `state`.
    static func paint(_ text: String, as state: String) -> String {
        guard enabled else { return text }
        switch state {
        case "up": return "\u{1B}[32m\(text)\u{1B}[0m"
        case "down", "ejected": return "\u{1B}[31m\(text)\u{1B}[0m"
        case "draining", "shadowed": return "\u{1B}[33m\(text)\u{1B}[0m"
        default: return text
        }
    }

    /// The length of `text` without its colour sequences.
    static func visibleLength(_ text: String) -> Int {
        var length = 0
        var escaping = false
        for character in text {
            if character == "\u{1B}" {
                escaping = true
            } else if escaping {
                if character == "m" { escaping = false }
            } else {
                length += 1
            }
        }
        return length
    }
}

// MARK: - tenants

struct TenantsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tenants",
        abstract: "List, show, add and remove tenants.",
        subcommands: [List.self, Show.self, Add.self, Remove.self]
    )

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List every tenant, of the file and of the API.")

        @OptionGroup var options: ManagementOptions

        func run() throws {
            try AdminCall.show(options, "GET", "/v1/tenants", Self.table)
        }

        static func table(_ object: [String: Any]) -> String {
            let tenants = object["tenants"] as? [[String: Any]] ?? []
            var rows = [["NAME", "SOURCE", "DOMAINS", "BACKENDS", "CERTIFICATE"]]
            for tenant in tenants {
                let shadowed = tenant["shadowed"] as? Bool == true
                let up = tenant["backends_up"] as? Int ?? 0
                let total = tenant["backends"] as? Int ?? 0
                rows.append([
                    tenant["name"] as? String ?? "",
                    shadowed ? Colour.state("shadowed") : tenant["source"] as? String ?? "",
                    (tenant["domains"] as? [String] ?? tenant["shadowed_domains"] as? [String] ?? [])
                        .joined(separator: ","),
                    shadowed
                        ? "-"
                        : Colour.paint("\(up)/\(total) up", as: up == total ? "up" : up == 0 ? "down" : "draining"),
                    (tenant["certificate"] as? Bool).map { $0 ? "own" : "default" } ?? "file",
                ])
            }
            return AdminCall.table(rows)
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show a tenant: its document, backends and certificate."
        )

        @Argument(help: "The tenant's name.") var name: String
        @OptionGroup var options: ManagementOptions

        func run() throws {
            try AdminCall.show(options, "GET", "/v1/tenants/\(AdminCall.segment(name))", TenantsCommand.describe)
        }
    }

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add a tenant (or replace it with --replace).",
            discussion: """
                Either --domain and --backend (each repeatable), or --file with a tenant in the configuration's \
                own keys (YAML or JSON; every key of a file tenant but certificate and key, which `certs add` \
                uploads).
                """
        )

        @Argument(help: "The tenant's name.") var name: String
        @Option(name: .customLong("domain"), help: "A domain it owns (repeatable).") var domains: [String] = []
        @Option(name: .customLong("backend"), help: "A backend HOST:PORT (repeatable).") var backends: [String] = []
        @Option(help: "round_robin or least_connections.") var balance: String?
        @Flag(help: "Redirect plain HTTP to HTTPS.") var httpsRedirect = false
        @Option(help: "A YAML or JSON file with the tenant's keys.") var file: String?
        @Flag(help: "Replace the tenant if it exists.") var replace = false
        @OptionGroup var options: ChangeOptions

        func validate() throws {
            if file == nil, domains.isEmpty || backends.isEmpty {
                throw ValidationError("give at least one --domain and one --backend, or --file")
            }
            if file != nil, !domains.isEmpty || !backends.isEmpty || balance != nil || httpsRedirect {
                throw ValidationError("--file holds the whole tenant: give its keys there, not as options too")
            }
        }

        func run() throws {
            let path = "/v1/tenants/\(AdminCall.segment(name))"
            if let file {
                guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
                    AdminCall.fail("cannot read \(file)")
                }
                // The API reads YAML and JSON alike; the name comes from the command line (the file's, if it has
                // one, must be the same).
                return try AdminCall.change(
                    options,
                    replace ? "PUT" : "POST",
                    replace ? path : "/v1/tenants?name=\(AdminCall.segment(name))",
                    rawBody: Data(text.utf8),
                    TenantsCommand.describe
                )
            }
            var document: [String: Any] = ["name": name, "domains": domains, "backends": backends]
            if let balance { document["balance"] = balance }
            if httpsRedirect { document["https_redirect"] = true }
            try AdminCall.change(
                options,
                replace ? "PUT" : "POST",
                replace ? path : "/v1/tenants",
                body: document,
                TenantsCommand.describe
            )
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Remove a tenant, its certificate and its drains."
        )

        @Argument(help: "The tenant's name.") var name: String
        @OptionGroup var options: ChangeOptions

        func run() throws {
            try AdminCall.change(options, "DELETE", "/v1/tenants/\(AdminCall.segment(name))") { object in
                "removed tenant \(name) (version \(object["version"] as? Int ?? 0))"
            }
        }
    }

    /// A tenant's answer for people.
    static func describe(_ tenant: [String: Any]) -> String {
        var lines: [String] = []
        let name = tenant["name"] as? String ?? ""
        var title = "\(name)  (\(tenant["source"] as? String ?? ""))"
        if let version = tenant["version"] as? Int { title += "  version \(version)" }
        lines.append(title)
        lines.append("  domains: \((tenant["domains"] as? [String] ?? []).joined(separator: ", "))")
        if let shadowed = tenant["shadowed_domains"] as? [String], !shadowed.isEmpty {
            lines.append("  \(Colour.state("shadowed")) by the file: \(shadowed.joined(separator: ", "))")
        }
        var rows = [["  BACKEND", "STATE", "CONNECTIONS"]]
        for backend in tenant["backends"] as? [[String: Any]] ?? [] {
            rows.append([
                "  " + (backend["address"] as? String ?? ""),
                Colour.state(backend["state"] as? String ?? ""),
                "\(backend["connections"] as? Int ?? 0)",
            ])
        }
        lines.append(AdminCall.table(rows))
        if let certificate = tenant["certificate"] as? [String: Any] {
            lines.append(
                "  certificate: \((certificate["names"] as? [String] ?? []).joined(separator: ", ")), not after "
                    + "\(certificate["not_after"] as? String ?? "?")"
            )
        }
        return lines.joined(separator: "\n")
    }
}

// MARK: - domains

struct DomainsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "domains",
        abstract: "Add a domain to a tenant, or remove one.",
        subcommands: [Add.self, Remove.self]
    )

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add a domain to a tenant.")
        @Argument(help: "The tenant's name.") var name: String
        @Argument(help: "The domain (a name, or a wildcard *.example.test).") var domain: String
        @OptionGroup var options: ChangeOptions

        func run() throws {
            try AdminCall.change(
                options,
                "POST",
                "/v1/tenants/\(AdminCall.segment(name))/domains",
                body: ["domain": domain],
                TenantsCommand.describe
            )
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a domain from a tenant.")
        @Argument(help: "The tenant's name.") var name: String
        @Argument(help: "The domain.") var domain: String
        @OptionGroup var options: ChangeOptions

        func run() throws {
            try AdminCall.change(
                options,
                "DELETE",
                "/v1/tenants/\(AdminCall.segment(name))/domains/\(AdminCall.segment(domain))",
                TenantsCommand.describe
            )
        }
    }
}

// MARK: - backends add, remove, weight

extension BackendsCommand {
    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add a backend to a tenant; checked at once.")
        @OptionGroup var target: Target
        @Option(help: "Its weight, 1 to 1000 (default 1).") var weight: Int?
        @OptionGroup var options: ChangeOptions

        func run() throws {
            var body: [String: Any] = ["backend": target.backend]
            if let weight { body["weight"] = weight }
            try AdminCall.change(
                options,
                "POST",
                "/v1/tenants/\(AdminCall.segment(target.tenant))/backends",
                body: body,
                TenantsCommand.describe
            )
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Remove a backend from a tenant; its requests in progress finish."
        )
        @OptionGroup var target: Target
        @OptionGroup var options: ChangeOptions

        func run() throws {
            try AdminCall.change(options, "DELETE", target.path, TenantsCommand.describe)
        }
    }

    struct Weight: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Set a backend's weight.")
        @OptionGroup var target: Target
        @Argument(help: "The weight, 1 to 1000.") var weight: Int
        @OptionGroup var options: ChangeOptions

        func run() throws {
            try AdminCall.change(
                options,
                "PUT",
                target.path + "/weight",
                body: ["weight": weight],
                TenantsCommand.describe
            )
        }
    }
}

// MARK: - certs

struct CertsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "certs",
        abstract: "Upload, remove and list tenants' certificates.",
        subcommands: [Add.self, Remove.self, List.self]
    )

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Upload a tenant's certificate chain and key (PEM); served by SNI at once."
        )
        @Argument(help: "The tenant's name.") var name: String
        @Option(help: "The PEM chain, leaf first.") var cert: String
        @Option(help: "The PEM private key.") var key: String
        @OptionGroup var options: ChangeOptions

        func run() throws {
            guard let chain = try? String(contentsOfFile: cert, encoding: .utf8) else {
                AdminCall.fail("cannot read \(cert)")
            }
            guard let keyText = try? String(contentsOfFile: key, encoding: .utf8) else {
                AdminCall.fail("cannot read \(key)")
            }
            try AdminCall.change(
                options,
                "PUT",
                "/v1/tenants/\(AdminCall.segment(name))/certificate",
                body: ["certificate": chain, "key": keyText]
            ) { object in
                for warning in object["warnings"] as? [String] ?? [] {
                    AdminCall.printError("warning: \(warning)")
                }
                return "certificate of \(name): \((object["names"] as? [String] ?? []).joined(separator: ", ")), "
                    + "not after \(object["not_after"] as? String ?? "?") (version \(object["version"] as? Int ?? 0))"
            }
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a tenant's certificate.")
        @Argument(help: "The tenant's name.") var name: String
        @OptionGroup var options: ChangeOptions

        func run() throws {
            try AdminCall.change(options, "DELETE", "/v1/tenants/\(AdminCall.segment(name))/certificate") { object in
                "removed the certificate of \(name) (version \(object["version"] as? Int ?? 0))"
            }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List uploaded certificates.")
        @OptionGroup var options: ManagementOptions

        func run() throws {
            try AdminCall.show(options, "GET", "/v1/certificates", Self.table)
        }

        static func table(_ object: [String: Any]) -> String {
            var rows = [["TENANT", "SUBJECT", "NAMES", "NOT AFTER", "FINGERPRINT (SHA-256)"]]
            for certificate in object["certificates"] as? [[String: Any]] ?? [] {
                rows.append([
                    certificate["tenant"] as? String ?? "",
                    certificate["subject"] as? String ?? "",
                    (certificate["names"] as? [String] ?? []).joined(separator: ","),
                    certificate["not_after"] as? String ?? "",
                    certificate["fingerprint"] as? String ?? "",
                ])
            }
            return AdminCall.table(rows)
        }
    }
}

// MARK: - apply, changes

struct ApplyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "apply",
        abstract: "Make a file's tenants the whole set of API-managed tenants, in one change.",
        discussion: """
            The file is YAML or JSON: a list of tenants in the configuration's own keys, or a mapping with \
            `tenants:`. Tenants not in it are removed, with their certificates; the answer is what was added, \
            changed and removed.
            """
    )

    @Argument(help: "The YAML or JSON file of tenants.") var file: String
    @Flag(help: "Answer the difference without applying it.") var dryRun = false
    @OptionGroup var options: ChangeOptions

    func run() throws {
        guard let text = FileManager.default.contents(atPath: file) else { AdminCall.fail("cannot read \(file)") }
        try AdminCall.change(options, "POST", "/v1/apply" + (dryRun ? "?dry_run=true" : ""), rawBody: text) { object in
            describe(object)
        }
    }

    /// The difference for people: counts, then each name (at most 50 of each).
    func describe(_ object: [String: Any]) -> String {
        let added = object["added"] as? [String] ?? []
        let changed = object["changed"] as? [String] ?? []
        let removed = object["removed"] as? [String] ?? []
        var lines = [
            "\(dryRun ? "would apply" : "applied") \(object["tenants"] as? Int ?? 0) tenants: \(added.count) added, "
                + "\(changed.count) changed, \(removed.count) removed (version \(object["version"] as? Int ?? 0))"
        ]
        for (sign, names) in [("+", added), ("~", changed), ("-", removed)] {
            lines += names.prefix(50).map { "  \(sign) \($0)" }
            if names.count > 50 { lines.append("  \(sign) … \(names.count - 50) more (--json lists them all)") }
        }
        return lines.joined(separator: "\n")
    }
}

struct ChangesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "changes",
        abstract: "List recorded changes: who changed what, when, at which version."
    )

    @Option(help: "Only changes after this version.") var since: Int64 = 0
    @Option(help: "At most this many.") var limit: Int = 1000
    @OptionGroup var options: ManagementOptions

    func run() throws {
        try AdminCall.show(options, "GET", "/v1/changes?since=\(since)&limit=\(limit)", Self.table)
    }

    static func table(_ object: [String: Any]) -> String {
        var rows = [["VERSION", "TIME", "ACTOR", "ACTION", "SUBJECT"]]
        for change in object["changes"] as? [[String: Any]] ?? [] {
            rows.append([
                "\(change["version"] as? Int ?? 0)",
                change["time"] as? String ?? "",
                change["actor"] as? String ?? "",
                change["action"] as? String ?? "",
                change["subject"] as? String ?? "",
            ])
        }
        return AdminCall.table(rows)
    }
}

struct FleetCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fleet",
        abstract: "List the nodes sharing the state store: the version each serves, how far behind, when last seen."
    )

    @OptionGroup var options: ManagementOptions

    func run() throws {
        try AdminCall.show(options, "GET", "/v1/fleet", Self.table)
    }

    static func table(_ object: [String: Any]) -> String {
        let version = object["version"] as? Int ?? 0
        var rows = [["NODE", "ADDRESS", "VERSION", "LAG", "LAST SEEN", "STATE"]]
        for node in object["nodes"] as? [[String: Any]] ?? [] {
            let live = node["live"] as? Bool ?? false
            let this = node["this"] as? Bool ?? false
            rows.append([
                (node["name"] as? String ?? "") + (this ? " *" : ""),
                node["address"] as? String ?? "",
                "\(node["applied"] as? Int ?? 0)",
                "\(node["lag"] as? Int ?? 0)",
                String(format: "%.1fs ago", node["last_seen_seconds"] as? Double ?? 0),
                Colour.paint(live ? "live" : "gone", as: live ? "up" : "down"),
            ])
        }
        return "store at version \(version)  (* this node)\n" + AdminCall.table(rows)
    }
}
