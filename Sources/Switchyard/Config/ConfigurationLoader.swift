import NIOCore
import SwitchyardTLS
import Yams

#if canImport(Darwin)
import Darwin
#elseif canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Reads `switchyard.yaml` into a validated ``Configuration``.
///
/// The file is checked as a whole before anything is returned, so a caller either gets a configuration it can apply
/// as is or a ``ConfigurationError`` naming the file, line, key path and reason; a running server that fails to
/// reload keeps its previous configuration. Unknown keys are errors (a typo must not silently fall back to a
/// default), and every value is checked for type and range. Backend host names are resolved here, once, so loading
/// blocks for as long as name resolution takes: call it off the event loops.
///
/// The accepted keys, in `snake_case`: `listen` (`http`, `https`), `workers`, `admin` (`socket`, `listen`,
/// `token_file`, `max_connections`, `idle_timeout`), `state`, `tls`
/// (`certificate`, `key`), `access_log` (a boolean, or `format`, `path`), `request_id`, `timeouts` (`client_header`, `keepalive`, `client_body`,
/// `upstream_connect`, `upstream_response`, `upstream_idle`, `tls_handshake`, `tunnel_idle`, `drain`), `limits` (`max_header_bytes`,
/// `max_headers`, `max_connections`, `upstream_keepalive`), `metrics` (`listen`, `tenant_histograms`, `basic_auth_file`) and `tenants`, a list of mappings with `name`,
/// `domains`, `backends`, `certificate`, `key` and `health` (`path`, `interval`, `timeout`, `rise`, `fall`).
/// Paths are kept as written; relative ones are relative to the working directory.
public enum ConfigurationLoader {
    /// Reads and validates the file at `path`.
    ///
    /// - Throws: a ``ConfigurationError`` naming `path`, also when the file cannot be read.
    public static func load(path: String) throws(ConfigurationError) -> Configuration {
        let text: String
        switch Self.readFile(atPath: path) {
        case .success(let contents):
            text = contents
        case .failure(let problem):
            throw ConfigurationError(file: path, line: nil, key: "", reason: "cannot read the file: \(problem.reason)")
        }
        return try Self.parse(yaml: text, file: path)
    }

    /// Parses and validates YAML text; `file` is only used in error messages.
    ///
    /// An empty document, or one with only comments, gives the defaults: no tenants and plain HTTP on
    /// `0.0.0.0:8080`. A leading byte order mark, as some editors write, is ignored.
    public static func parse(yaml: String, file: String) throws(ConfigurationError) -> Configuration {
        let root = try Self.compose(yaml: yaml, file: file)
        let document = ConfigurationNode(
            node: root ?? Node([(Node, Node)]()),
            path: "",
            line: root?.mark?.line,
            file: file
        )
        return try Self.configuration(from: document)
    }

    /// Parses one tenant managed through the admin API (a document the control plane stores), YAML or JSON.
    /// Tenants managed through the API cannot name certificate files (their certificates are uploaded,
    /// `switchyard certs add`), so `certificate` and `key` are refused.
    ///
    /// - Parameter file: what errors call the document (`request body`, `stored tenant 'shop'`).
    public static func parseManagedTenant(
        yaml: String,
        file: String
    ) throws(ConfigurationError)
        -> TenantConfiguration
    {
        try Self.tenant(Self.document(yaml: yaml, file: file), allowsFiles: false).0
    }

    /// The YAML node tree of `yaml`, `nil` for an empty document; a leading byte order mark is ignored.
    private static func compose(yaml: String, file: String) throws(ConfigurationError) -> Node? {
        do {
            return try Yams.compose(yaml: yaml.hasPrefix("\u{FEFF}") ? String(yaml.dropFirst()) : yaml)
        } catch {
            throw Self.syntaxError(error, file: file)
        }
    }

    private static func document(yaml: String, file: String) throws(ConfigurationError) -> ConfigurationNode {
        guard let root = try Self.compose(yaml: yaml, file: file) else {
            throw ConfigurationError(file: file, line: nil, key: "", reason: "is empty; expected a tenant")
        }
        return ConfigurationNode(node: root, path: "", line: root.mark?.line, file: file)
    }

    // MARK: - Top level

    private enum Key {
        static let topLevel = [
            "listen", "workers", "io", "admin", "state", "state_password_file", "state_cache", "tls", "access_log",
            "timeouts", "limits",
            "tenants",
            "underscores_in_headers", "metrics", "request_id", "node_name", "change_log",
        ]
        static let changeLog = ["max_age", "max_changes"]
        static let accessLog = ["format", "path"]
        static let metrics = ["listen", "tenant_histograms", "basic_auth_file"]
        static let listen = ["http", "https"]
        static let admin = ["socket", "listen", "token_file", "max_connections", "idle_timeout"]
        static let tls = ["certificate", "key"]
        static let tlsPolicy = [
            "ciphers", "ciphersuites", "groups", "session_cache", "session_tickets", "ticket_key_rotation",
        ]
        static let timeouts = [
            "client_header", "keepalive", "client_body", "upstream_connect", "upstream_response", "upstream_idle",
            "tls_handshake", "tunnel_idle", "drain", "client_send",
        ]
        static let limits = ["max_header_bytes", "max_headers", "max_connections", "upstream_keepalive"]
        static let tenant = [
            "name", "domains", "backends", "certificate", "key", "health", "balance", "https_redirect", "tunnel_idle",
            "max_tunnels", "sticky", "allow_broad_wildcards", "upgrade_protocols",
        ]
        static let sticky = ["cookie", "max_age", "same_site"]
        static let health = ["path", "host", "status", "interval", "timeout", "rise", "fall"]
    }

    private static func configuration(from document: ConfigurationNode) throws(ConfigurationError) -> Configuration {
        let top = try document.mapping(acceptedKeys: Key.topLevel)
        var configuration = Configuration()
        let (listen, httpsNode) = try Self.listen(top["listen"], file: document.file)
        configuration.listen = listen
        if let node = top["workers"] {
            configuration.workers = try Self.workers(node)
        }
        if let node = top["io"] {
            let text = try node.scalarText(expected: "nio or epoll")
            guard let value = Configuration.IO(rawValue: text) else {
                throw node.error("\(Self.quoted(text)) is not an event loop; use nio or epoll")
            }
            configuration.io = value
        }
        if let node = top["admin"] {
            configuration.admin = try Self.admin(node)
        }
        if let node = top["state"] {
            let value = try node.nonEmptyString(
                expected: "the path of the state database, or postgres://USER@HOST:PORT/DATABASE"
            )
            do {
                _ = try StateLocation(parsing: value)
            } catch {
                // Not quoted back: the value may hold a password.
                throw node.error("the PostgreSQL URL \(error)")
            }
            configuration.statePath = value
        }
        if let node = top["state_cache"] {
            configuration.stateCachePath = try node.nonEmptyString(
                expected: "the path of this node's copy of the PostgreSQL store's state"
            )
        }
        if let node = top["state_password_file"] {
            configuration.statePasswordFile = try node.nonEmptyString(
                expected: "the path of a file holding the PostgreSQL password"
            )
        }
        if let node = top["change_log"] {
            configuration.changeLog = try Self.changeLog(node)
        }
        if let node = top["tls"] {
            let mapping = try node.mapping(acceptedKeys: Key.tls + Key.tlsPolicy)
            configuration.tls = try Self.tlsFiles(mapping)
            configuration.tlsPolicy = try Self.tlsPolicy(mapping)
        }
        if let node = top["access_log"] {
            try Self.accessLog(node, into: &configuration)
        }
        if let node = top["request_id"] {
            configuration.requestID = try node.bool()
        }
        if let node = top["metrics"] {
            configuration.metrics = try Self.metrics(node)
        }
        if let node = top["node_name"] {
            configuration.nodeName = try node.nonEmptyString(expected: "this node's name in the fleet")
        }
        if let node = top["underscores_in_headers"] {
            configuration.underscoresInHeaders = try node.bool()
        }
        if let node = top["timeouts"] {
            configuration.timeouts = try Self.timeouts(node)
        }
        if let node = top["limits"] {
            configuration.limits = try Self.limits(node)
        }
        if let node = top["tenants"] {
            configuration.tenants = try Self.tenants(node)
        }
        if let httpsNode, !configuration.listen.https.isEmpty, configuration.tls == nil {
            throw httpsNode.error(
                "HTTPS needs a default certificate: add 'tls' with 'certificate' and 'key' (tenant certificates are "
                    + "only chosen by SNI)"
            )
        }
        return configuration
    }

    // MARK: - listen, workers, admin, tls

    /// The addresses, and the `https` node for errors about HTTPS.
    private static func listen(
        _ node: ConfigurationNode?,
        file: String
    ) throws(ConfigurationError) -> (Configuration.Listen, httpsNode: ConfigurationNode?) {
        guard let node else {
            // No `listen` at all: plain HTTP on every IPv4 address, as the documentation's example.
            let fallback = ConfigurationNode(node: Node("0.0.0.0:8080"), path: "listen.http", line: nil, file: file)
            return (Configuration.Listen(http: [try Self.listenAddress("0.0.0.0:8080", at: fallback)]), nil)
        }
        let mapping = try node.mapping(acceptedKeys: Key.listen)
        var listen = Configuration.Listen()
        var seen: [(address: SocketAddress, path: String)] = []
        for key in Key.listen {
            guard let list = mapping[key] else {
                continue
            }
            for (text, item) in try list.stringList(
                allowingSingle: true,
                listDescription: "a list of HOST:PORT addresses",
                itemDescription: "a HOST:PORT address"
            ) {
                let address = try Self.listenAddress(text, at: item)
                if let earlier = seen.first(where: { $0.address == address }) {
                    throw item.error(
                        "\(Self.quoted(text)) is already listed at \(earlier.path); each address may be listed once"
                    )
                }
                seen.append((address, item.path))
                if key == "http" {
                    listen.http.append(address)
                } else {
                    listen.https.append(address)
                }
            }
        }
        guard !listen.http.isEmpty || !listen.https.isEmpty else {
            throw node.error("has no address; list at least one HOST:PORT under 'http' or 'https' (e.g. 0.0.0.0:8080)")
        }
        return (listen, mapping["https"])
    }

    /// An address to listen on: an IPv4 literal, or an IPv6 literal in brackets; never a name, which could resolve
    /// differently from one start to the next.
    private static func listenAddress(
        _ text: String,
        at node: ConfigurationNode
    ) throws(ConfigurationError) -> SocketAddress {
        let hostAndPort = try Self.hostAndPort(text, at: node)
        guard let address = hostAndPort.ipLiteralAddress() else {
            if hostAndPort.isBracketed {
                throw node.error(
                    "\(Self.quoted(text)): \(Self.quoted(hostAndPort.host)) in brackets is not an IPv6 address"
                )
            }
            throw node.error(
                "\(Self.quoted(text)): \(Self.quoted(hostAndPort.host)) is not an IP address; listen on IP literals "
                    + "such as 0.0.0.0:8080, 127.0.0.1:8080 or [::]:8080"
            )
        }
        return address
    }

    private static func hostAndPort(
        _ text: String,
        at node: ConfigurationNode
    ) throws(ConfigurationError) -> HostAndPort {
        switch HostAndPort.parse(text) {
        case .success(let hostAndPort):
            return hostAndPort
        case .failure(.malformed):
            throw node.error("\(Self.quoted(text)) is not \(HostAndPort.syntaxExample)")
        case .failure(.unbracketedIPv6):
            throw node.error(
                "\(Self.quoted(text)) is not HOST:PORT: write an IPv6 address in brackets, e.g. [::1]:8080"
            )
        case .failure(.portOutOfRange(let port)):
            throw node.error("\(Self.quoted(text)): port \(port) is out of range; expected a port from 1 to 65535")
        }
    }

    /// `admin:`. The TCP listener is for loopback only and needs its token file; the file itself (permissions,
    /// tokens) is read when `serve` starts, not here, so that `check-config` and reloads never read secrets.
    private static func admin(_ node: ConfigurationNode) throws(ConfigurationError) -> Configuration.Admin {
        let mapping = try node.mapping(acceptedKeys: Key.admin)
        var admin = Configuration.Admin()
        if let socket = mapping["socket"] {
            admin.socket = try Self.unixSocketPath(socket)
        }
        if let listen = mapping["listen"] {
            let text = try listen.scalarText(expected: "a loopback HOST:PORT such as 127.0.0.1:9000")
            let address = try Self.listenAddress(text, at: listen)
            guard Self.isLoopback(address) else {
                throw listen.error(
                    "\(Self.quoted(text)) is not a loopback address; the admin API listens on 127.0.0.1 or [::1] "
                        + "only (it controls the balancer: reach it from elsewhere through an SSH tunnel)"
                )
            }
            admin.listen = address
        }
        if let tokenFile = mapping["token_file"] {
            admin.tokenFile = try tokenFile.nonEmptyString(expected: "the path of the admin API's token file")
        }
        switch (mapping["listen"], mapping["token_file"]) {
        case (let listen?, nil):
            throw listen.error(
                "needs admin.token_file: a file (mode 0600) of bearer tokens, one a line as NAME:TOKEN, that TCP "
                    + "clients must present"
            )
        case (nil, let tokenFile?):
            throw tokenFile.error("is only used with admin.listen; add admin.listen or remove admin.token_file")
        default:
            break
        }
        if let maximum = mapping["max_connections"] {
            admin.maximumConnections = try maximum.integer(in: 1...100_000)
        }
        if let idle = mapping["idle_timeout"] {
            admin.idleTimeout = try idle.positiveDuration()
        }
        return admin
    }

    /// `access_log: true|false`, or `{ format: text|json, path: stdout|FILE }` (which turns it on).
    private static func accessLog(
        _ node: ConfigurationNode,
        into configuration: inout Configuration
    ) throws(ConfigurationError) {
        guard case .mapping = node.node else {
            configuration.accessLog = try node.bool()
            return
        }
        let mapping = try node.mapping(acceptedKeys: Key.accessLog)
        configuration.accessLog = true
        if let format = mapping["format"] {
            let text = try format.scalarText(expected: "text or json")
            guard let value = AccessLogFormat(rawValue: text) else {
                throw format.error("\(Self.quoted(text)) is not a format; use text or json")
            }
            configuration.accessLogFormat = value
        }
        if let path = mapping["path"] {
            let text = try path.nonEmptyString(expected: "stdout or the path of a file")
            configuration.accessLogPath = text == "stdout" ? nil : text
        }
    }

    private static func metrics(_ node: ConfigurationNode) throws(ConfigurationError) -> Configuration.Metrics {
        let mapping = try node.mapping(acceptedKeys: Key.metrics)
        var metrics = Configuration.Metrics()
        if let listen = mapping["listen"] {
            let text = try listen.scalarText(expected: "a HOST:PORT such as 127.0.0.1:9100")
            metrics.listen = try Self.listenAddress(text, at: listen)
        }
        if let names = mapping["tenant_histograms"] {
            metrics.tenantHistograms = try names.stringList(
                allowingSingle: false,
                listDescription: "a list of tenant names",
                itemDescription: "a tenant name"
            ).map(\.text)
        }
        if let file = mapping["basic_auth_file"] {
            metrics.basicAuthFile = try file.nonEmptyString(expected: "the path of a file of NAME:PASSWORD lines")
        }
        if let file = mapping["basic_auth_file"], metrics.listen == nil {
            throw file.error("is only used with metrics.listen; add metrics.listen or remove metrics.basic_auth_file")
        }
        return metrics
    }

    private static func changeLog(_ node: ConfigurationNode) throws(ConfigurationError) -> Configuration.ChangeLog {
        let mapping = try node.mapping(acceptedKeys: Key.changeLog)
        var changeLog = Configuration.ChangeLog()
        if let age = mapping["max_age"] {
            changeLog.maximumAge = Self.isNone(age) ? nil : try age.positiveDuration()
        }
        if let count = mapping["max_changes"] {
            changeLog.maximumChanges = Self.isNone(count) ? nil : try count.integer(in: 1...Int(Int32.max))
        }
        return changeLog
    }

    /// Whether `node` is the plain word `none`: no limit.
    private static func isNone(_ node: ConfigurationNode) -> Bool {
        (try? node.scalarText(expected: "")) == "none"
    }

    /// Whether `address` is 127.0.0.0/8 or ::1.
    private static func isLoopback(_ address: SocketAddress) -> Bool {
        switch address {
        case .v4:
            return address.ipAddress?.hasPrefix("127.") ?? false
        case .v6:
            return address.ipAddress == "::1"
        default:
            return false
        }
    }

    private static func workers(_ node: ConfigurationNode) throws(ConfigurationError) -> Int? {
        let expected = "auto or an integer from 1 to 256"
        let text = try node.scalarText(expected: expected)
        if text.lowercased() == "auto" {
            return nil
        }
        guard Int(text.filter { $0 != "_" }) != nil else {
            throw node.error("expected \(expected), found \(node.foundDescription)")
        }
        return try node.integer(in: 1...256)
    }

    /// The longest unix socket path `bind(2)` takes, terminator excluded; `sun_path` is 104 bytes on Darwin and
    /// 108 on Linux, so the smaller keeps a file portable.
    private static let maximumUnixSocketPathBytes = 103

    private static func unixSocketPath(_ node: ConfigurationNode) throws(ConfigurationError) -> String {
        let path = try node.nonEmptyString(expected: "the path of the admin unix socket")
        guard path.utf8.count <= Self.maximumUnixSocketPathBytes else {
            throw node.error(
                "is \(path.utf8.count) bytes long; a unix socket path must be at most "
                    + "\(Self.maximumUnixSocketPathBytes) bytes (use a shorter or relative path)"
            )
        }
        return path
    }

    /// `certificate` and `key`, both required.
    /// `tls:` protocol settings. Cipher and group lists are checked by OpenSSL when the contexts are built, which
    /// names the list and refuses the file.
    private static func tlsPolicy(_ mapping: ConfigurationMapping) throws(ConfigurationError) -> TLSPolicy {
        var policy = TLSPolicy()
        if let node = mapping["ciphers"] {
            policy.tls12Ciphers = try node.nonEmptyString(expected: "an OpenSSL cipher list for TLS 1.2")
        }
        if let node = mapping["ciphersuites"] {
            policy.tls13Ciphersuites = try node.nonEmptyString(expected: "an OpenSSL list of TLS 1.3 cipher suites")
        }
        if let node = mapping["groups"] {
            policy.groups = try node.nonEmptyString(expected: "an OpenSSL list of groups such as X25519:P-256")
        }
        if let node = mapping["session_cache"] {
            policy.sessionCacheSize = try node.integer(in: 0...10_000_000)
        }
        if let node = mapping["session_tickets"] {
            policy.ticketsPerHandshake = try node.integer(in: 0...10)
        }
        if let node = mapping["ticket_key_rotation"] {
            policy.ticketKeyRotation = try node.positiveDuration()
        }
        return policy
    }

    private static func tlsFiles(_ mapping: ConfigurationMapping) throws(ConfigurationError) -> Configuration.TLSFiles {
        let certificate = try mapping.required("certificate", expected: "the path of a PEM certificate chain")
            .nonEmptyString(expected: "the path of a PEM certificate chain")
        let key = try mapping.required("key", expected: "the path of the certificate's PEM private key")
            .nonEmptyString(expected: "the path of the certificate's PEM private key")
        return Configuration.TLSFiles(certificate: certificate, key: key)
    }

    /// `upgrade_protocols`: protocol names an `Upgrade` may switch to (`websocket`, `h2c`…), tokens without a
    /// version, compared without case.
    private static func upgradeProtocols(_ node: ConfigurationNode) throws(ConfigurationError) -> [String] {
        let items = try node.stringList(
            allowingSingle: true,
            listDescription: "a list of protocol names",
            itemDescription: "a protocol name such as websocket or h2c"
        )
        var protocols: [String] = []
        for (text, item) in items {
            guard !text.isEmpty, text.utf8.allSatisfy(HTTPSyntax.isTokenCharacter) else {
                throw item.error("\(Self.quoted(text)) is not a protocol name (a token such as websocket or h2c)")
            }
            protocols.append(text.lowercased())
        }
        return protocols
    }

    // MARK: - timeouts, limits

    private static func timeouts(_ node: ConfigurationNode) throws(ConfigurationError) -> Configuration.Timeouts {
        let mapping = try node.mapping(acceptedKeys: Key.timeouts)
        var timeouts = Configuration.Timeouts()
        let fields: [(key: String, field: WritableKeyPath<Configuration.Timeouts, TimeAmount>)] = [
            ("client_header", \.clientHeader),
            ("keepalive", \.keepAlive),
            ("client_body", \.clientBody),
            ("upstream_connect", \.upstreamConnect),
            ("upstream_response", \.upstreamResponse),
            ("upstream_idle", \.upstreamIdle),
            ("tls_handshake", \.tlsHandshake),
            ("tunnel_idle", \.tunnelIdle),
            ("drain", \.drain),
            ("client_send", \.clientSend),
        ]
        for (key, field) in fields {
            if let value = mapping[key] {
                timeouts[keyPath: field] = try value.positiveDuration()
            }
        }
        return timeouts
    }

    private static func limits(_ node: ConfigurationNode) throws(ConfigurationError) -> Configuration.Limits {
        let mapping = try node.mapping(acceptedKeys: Key.limits)
        var limits = Configuration.Limits()
        let fields: [(key: String, range: ClosedRange<Int>, field: WritableKeyPath<Configuration.Limits, Int>)] = [
            ("max_header_bytes", 1024...1_048_576, \.maxHeaderBytes),
            ("max_headers", 1...10_000, \.maxHeaderCount),
            ("max_connections", 1...Int.max, \.maxConnections),
            ("upstream_keepalive", 0...Int.max, \.upstreamKeepAlive),
        ]
        for (key, range, field) in fields {
            if let value = mapping[key] {
                limits[keyPath: field] = try value.integer(in: range)
            }
        }
        return limits
    }

    // MARK: - tenants

    private static func tenants(_ node: ConfigurationNode) throws(ConfigurationError) -> [TenantConfiguration] {
        var tenants: [TenantConfiguration] = []
        var tenantPaths: [String: String] = [:]
        // Normalised domain -> index of the tenant owning it.
        var domainOwners: [String: Int] = [:]
        for tenantNode in try node.list(description: "a list of tenants") {
            let (tenant, nameNode, domainNodes) = try Self.tenant(tenantNode)
            if let earlier = tenantPaths[tenant.name] {
                throw nameNode.error("tenant '\(tenant.name)' is already declared at \(earlier); names must be unique")
            }
            tenantPaths[tenant.name] = tenantNode.path
            for (domain, item) in zip(tenant.domains, domainNodes) {
                if let owner = domainOwners[domain] {
                    throw item.error(
                        "domain \(Self.quoted(domain)) of tenant '\(tenant.name)' already belongs to tenant "
                            + "'\(tenants[owner].name)'; a domain may belong to only one tenant"
                    )
                }
                domainOwners[domain] = tenants.count
            }
            tenants.append(tenant)
        }
        return tenants
    }

    private static let maximumTenantNameLength = 64

    /// One tenant, with the nodes of its name and of each of its domains for errors that involve other tenants.
    private static func tenant(
        _ node: ConfigurationNode,
        allowsFiles: Bool = true
    ) throws(ConfigurationError) -> (TenantConfiguration, nameNode: ConfigurationNode, domainNodes: [ConfigurationNode])
    {
        let mapping = try node.mapping(acceptedKeys: Key.tenant)
        if !allowsFiles, let file = mapping["certificate"] ?? mapping["key"] {
            throw file.error(
                "a tenant managed through the admin API cannot name certificate files; upload its certificate with "
                    + "`switchyard certs add NAME --cert FILE --key FILE` (PUT /v1/tenants/NAME/certificate)"
            )
        }
        let nameExpected = "a name of letters, digits, '.', '_' and '-' (at most \(Self.maximumTenantNameLength))"
        let nameNode = try mapping.required("name", expected: nameExpected)
        let name = try nameNode.nonEmptyString(expected: nameExpected)
        guard name.count <= Self.maximumTenantNameLength, name.allSatisfy(Self.isTenantNameCharacter) else {
            throw nameNode.error("\(Self.quoted(name)) is not a valid tenant name; expected \(nameExpected)")
        }

        // Read first: it decides whether the domains below may include a wildcard over a whole top-level domain.
        var allowsBroadWildcards = false
        if let node = mapping["allow_broad_wildcards"] {
            allowsBroadWildcards = try node.bool()
        }

        let domainsNode = try mapping.required("domains", expected: "a list of the domains the tenant owns")
        var domains: [String] = []
        // The same domains, for finding one listed twice in constant time (a tenant may list 100,000 of them).
        var listedDomains: Set<String> = []
        var domainNodes: [ConfigurationNode] = []
        for (text, item) in try domainsNode.stringList(
            allowingSingle: false,
            listDescription: "a list of domain names",
            itemDescription: "a domain name"
        ) {
            let domain: String
            switch DomainName.normaliseTenantDomain(text) {
            case .success(let normalised):
                domain = normalised
            case .failure(let problem):
                throw item.error("\(Self.quoted(text)) \(problem.reason)")
            }
            if !allowsBroadWildcards, DomainName.isBroadWildcard(domain) {
                throw item.error(
                    "\(Self.quoted(text)) is a wildcard over a whole top-level domain: every name under it would "
                        + "route to this tenant; list the tenant's own names (e.g. *.shop.test), or set "
                        + "allow_broad_wildcards: true on the tenant if that is really meant"
                )
            }
            guard listedDomains.insert(domain).inserted else {
                throw item.error("\(Self.quoted(text)) is listed twice (as \(Self.quoted(domain)))")
            }
            domains.append(domain)
            domainNodes.append(item)
        }
        guard !domains.isEmpty else {
            throw domainsNode.error("must list at least one domain (e.g. [\"shop.test\", \"*.shop.test\"])")
        }

        let backendsNode = try mapping.required("backends", expected: "a list of HOST:PORT backend addresses")
        var backends: [(address: SocketAddress, path: String)] = []
        // Where each backend is listed, for finding one listed twice in constant time.
        var backendPaths: [SocketAddress: String] = [:]
        var weights: [SocketAddress: Int] = [:]
        var names: [SocketAddress: String] = [:]
        var drained: Set<SocketAddress> = []
        for (text, item) in try backendsNode.stringList(
            allowingSingle: false,
            listDescription: "a list of HOST:PORT addresses",
            itemDescription: "a HOST:PORT address"
        ) {
            // "HOST:PORT", then, as in nginx's upstream blocks, "weight=N" and "drain" (nginx's "down" for a
            // backend taken out of rotation), each at most once.
            let words = text.split(separator: " ", omittingEmptySubsequences: true)
            let address = try Self.backendAddress(words.first.map(String.init) ?? text, at: item)
            var drain = false
            var weight: Int?
            for word in words.dropFirst() {
                if word == "drain", !drain {
                    drain = true
                } else if word.hasPrefix("weight="), weight == nil, let value = Int(word.dropFirst(7)),
                    (1...1000).contains(value)
                {
                    weight = value
                } else {
                    throw item.error(
                        "\(Self.quoted(text)) is not HOST:PORT [weight=N] [drain] (N from 1 to 1000; "
                            + "\(Self.quoted(word)) is the problem)"
                    )
                }
            }
            if let earlier = backendPaths[address] {
                throw item.error("\(Self.quoted(text)) is the same backend as \(earlier) (\(address))")
            }
            backendPaths[address] = item.path
            if drain { drained.insert(address) }
            if let weight { weights[address] = weight }
            backends.append((address, item.path))
            names[address] = words.first.map(String.init) ?? text
        }
        guard !backends.isEmpty else {
            throw backendsNode.error("must list at least one HOST:PORT backend (e.g. [\"10.0.0.5:8080\"])")
        }

        let tls: Configuration.TLSFiles?
        switch (mapping["certificate"], mapping["key"]) {
        case (nil, nil):
            tls = nil
        case (.some(let certificate), nil):
            throw certificate.error(
                "is set but 'key' is missing; a tenant certificate needs both 'certificate' and 'key', or neither"
            )
        case (nil, .some(let key)):
            throw key.error(
                "is set but 'certificate' is missing; a tenant certificate needs both 'certificate' and 'key', or "
                    + "neither"
            )
        case (.some, .some):
            tls = try Self.tlsFiles(mapping)
        }

        var health: HealthCheckConfiguration?
        if let healthNode = mapping["health"] {
            health = try Self.health(healthNode)
        }
        var tenant = TenantConfiguration(
            name: name,
            domains: domains,
            backends: backends.map(\.address),
            tls: tls,
            health: health
        )
        tenant.weights = weights
        tenant.backendNames = names
        tenant.drained = drained
        if let node = mapping["balance"] {
            let expected = BalancingAlgorithm.allCases.map(\.rawValue).joined(separator: " or ")
            let text = try node.nonEmptyString(expected: expected)
            guard let balance = BalancingAlgorithm(rawValue: text) else {
                throw node.error("\(Self.quoted(text)) is not a balancing algorithm; expected \(expected)")
            }
            tenant.balance = balance
        }
        if let node = mapping["https_redirect"] {
            tenant.httpsRedirect = try node.bool()
        }
        if let node = mapping["tunnel_idle"] {
            tenant.tunnelIdle = try node.positiveDuration()
        }
        if let node = mapping["max_tunnels"] {
            tenant.maxTunnels = try node.integer(in: 1...1_000_000)
        }
        if let node = mapping["upgrade_protocols"] {
            tenant.upgradeProtocols = try Self.upgradeProtocols(node)
        }
        if let node = mapping["sticky"] {
            tenant.sticky = try Self.sticky(node)
            if let sticky = tenant.sticky, sticky.cookie.hasPrefix("__Secure-") || sticky.cookie.hasPrefix("__Host-"),
                !tenant.httpsRedirect
            {
                throw node.error(
                    "the cookie \(Self.quoted(sticky.cookie)) can only be set over HTTPS (browsers refuse __Secure- "
                        + "and __Host- cookies without Secure); set https_redirect: true for this tenant, or choose "
                        + "another name"
                )
            }
        }
        return (tenant, nameNode, domainNodes)
    }

    private static func isTenantNameCharacter(_ character: Character) -> Bool {
        guard character.isASCII else {
            return false
        }
        switch character {
        case "a"..."z", "A"..."Z", "0"..."9", ".", "_", "-": return true
        default: return false
        }
    }

    /// A backend: an IP literal (IPv6 in brackets) or a host name, resolved now with the system resolver (the first
    /// address it returns is used).
    private static func backendAddress(
        _ text: String,
        at node: ConfigurationNode
    ) throws(ConfigurationError) -> SocketAddress {
        let hostAndPort = try Self.hostAndPort(text, at: node)
        if let address = hostAndPort.ipLiteralAddress() {
            return address
        }
        if hostAndPort.isBracketed {
            throw node.error(
                "\(Self.quoted(text)): \(Self.quoted(hostAndPort.host)) in brackets is not an IPv6 address"
            )
        }
        if let problem = DomainName.hostnameProblem(hostAndPort.host) {
            throw node.error("\(Self.quoted(text)): the host \(Self.quoted(hostAndPort.host)) \(problem.reason)")
        }
        do {
            return try SocketAddress.makeAddressResolvingHost(hostAndPort.host, port: hostAndPort.port)
        } catch {
            throw node.error(
                "\(Self.quoted(text)): the host \(Self.quoted(hostAndPort.host)) does not resolve; use an IP address "
                    + "or a name this machine can resolve"
            )
        }
    }

    /// `sticky: true`, or `sticky: { cookie: NAME, max_age: 1h, same_site: lax }`.
    private static func sticky(_ node: ConfigurationNode) throws(ConfigurationError) -> StickySessionConfiguration? {
        if case .scalar = node.node {
            return try node.bool() ? StickySessionConfiguration() : nil
        }
        let mapping = try node.mapping(acceptedKeys: Key.sticky)
        var sticky = StickySessionConfiguration()
        if let cookie = mapping["cookie"] {
            let name = try cookie.nonEmptyString(
                expected: "a cookie name such as \(StickySessionConfiguration.defaultCookie)"
            )
            guard name.utf8.allSatisfy(HTTPSyntax.isTokenCharacter) else {
                throw cookie.error(
                    "\(Self.quoted(name)) is not a valid cookie name; use letters, digits and !#$%&'*+-.^_`|~ (no "
                        + "spaces, '=' or ';')"
                )
            }
            sticky.cookie = name
        }
        if let maxAge = mapping["max_age"] {
            let duration = try maxAge.positiveDuration()
            guard duration >= .seconds(1), duration.nanoseconds % 1_000_000_000 == 0 else {
                throw maxAge.error(
                    "must be a whole number of seconds, at least 1s (cookies count their age in seconds)"
                )
            }
            sticky.maxAge = duration
        }
        if let sameSite = mapping["same_site"] {
            let expected = StickySessionConfiguration.SameSite.allCases.map(\.rawValue).joined(separator: ", ")
            let text = try sameSite.nonEmptyString(expected: expected)
            guard let value = StickySessionConfiguration.SameSite(rawValue: text) else {
                throw sameSite.error("\(Self.quoted(text)) is not a SameSite value; expected \(expected)")
            }
            sticky.sameSite = value
        }
        return sticky
    }

    private static func health(_ node: ConfigurationNode) throws(ConfigurationError) -> HealthCheckConfiguration {
        let mapping = try node.mapping(acceptedKeys: Key.health)
        var health = HealthCheckConfiguration()
        if let pathNode = mapping["path"] {
            let path = try pathNode.nonEmptyString(expected: "an HTTP path such as /healthz")
            guard path.hasPrefix("/") else {
                throw pathNode.error("\(Self.quoted(path)) must start with '/' (e.g. /healthz)")
            }
            guard !path.contains(where: { $0.isWhitespace || !$0.isASCII || ($0.asciiValue ?? 0) < 0x20 }) else {
                throw pathNode.error("\(Self.quoted(path)) must not contain spaces, control or non-ASCII characters")
            }
            health.path = path
        }
        if let hostNode = mapping["host"] {
            let text = try hostNode.nonEmptyString(expected: "a host name for the check's Host header")
            guard let host = HostName.normalize(text) else {
                throw hostNode.error("\(Self.quoted(text)) is not a host name")
            }
            health.host = host
        }
        if let statusNode = mapping["status"] {
            // "200" or "200-399".
            let text = try statusNode.scalarText(expected: "a status or a range such as 200-399")
            let bounds = text.split(separator: "-", omittingEmptySubsequences: false).map {
                Int(String($0.filter { $0 != " " }))
            }
            guard (1...2).contains(bounds.count), let low = bounds.first ?? nil, let high = bounds.last ?? nil,
                (100...599).contains(low), (100...599).contains(high), low <= high
            else {
                throw statusNode.error("\(Self.quoted(text)) is not a status or a range such as 200-399 (100 to 599)")
            }
            health.expectedStatus = low...high
        }
        if let interval = mapping["interval"] {
            health.interval = try interval.positiveDuration()
        }
        if let timeout = mapping["timeout"] {
            health.timeout = try timeout.positiveDuration()
        }
        if let rise = mapping["rise"] {
            health.rise = try rise.integer(in: 1...100)
        }
        if let fall = mapping["fall"] {
            health.fall = try fall.integer(in: 1...100)
        }
        // A timeout equal to the interval is accepted: it is HAProxy's default (its check timeout is the interval
        // unless set), so files are often written that way. Checks of a backend never overlap whatever the two
        // are: the next check is scheduled only once the previous one has finished (see `BackendCheck`), so a
        // check that runs into its timeout delays the next one rather than running next to it.
        guard health.timeout <= health.interval else {
            let culprit = mapping["timeout"] ?? mapping["interval"] ?? node
            throw culprit.error(
                "the timeout (\(health.timeout.configurationDescription)) must not be longer than the interval "
                    + "(\(health.interval.configurationDescription))"
            )
        }
        return health
    }

    /// See ``ConfigurationError/quoted(_:)``: how errors quote an operator's value.
    private static func quoted(_ text: some StringProtocol) -> String {
        ConfigurationError.quoted(text)
    }

    // MARK: - YAML and file errors

    /// A YAML syntax error as a ``ConfigurationError``, with the line libyaml reports.
    private static func syntaxError(_ error: any Error, file: String) -> ConfigurationError {
        guard let yamlError = error as? YamlError else {
            return ConfigurationError(file: file, line: nil, key: "", reason: "invalid YAML: \(error)")
        }
        switch yamlError {
        case .scanner(let context, let problem, let mark, _),
            .parser(let context, let problem, let mark, _),
            .composer(let context, let problem, let mark, _):
            var reason = "invalid YAML: \(problem)"
            if let context {
                reason += " (\(context.text), line \(context.mark.line))"
            }
            return ConfigurationError(file: file, line: mark.line, key: "", reason: reason)
        case .reader(let problem, let offset, _, let yaml):
            let line = offset.map { offset in 1 + yaml.prefix(offset).filter(\.isNewline).count }
            return ConfigurationError(file: file, line: line, key: "", reason: "invalid YAML: \(problem)")
        case .duplicatedKeysInMapping(let duplicates, let context):
            let keys = duplicates.sorted().map { Self.quoted($0) }.joined(separator: ", ")
            return ConfigurationError(
                file: file,
                line: context.mark.line,
                key: "",
                reason: "invalid YAML: duplicate key \(keys); a key may appear only once in a mapping"
            )
        default:
            return ConfigurationError(file: file, line: nil, key: "", reason: "invalid YAML: \(yamlError)")
        }
    }

    private struct ReadProblem: Error {
        var reason: String
    }

    /// The whole file as UTF-8 text, or the system's reason it cannot be read.
    private static func readFile(atPath path: String) -> Result<String, ReadProblem> {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else {
            return .failure(ReadProblem(reason: Self.systemErrorDescription(errno)))
        }
        defer { _ = close(descriptor) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let count = chunk.withUnsafeMutableBytes { buffer in
                read(descriptor, buffer.baseAddress, buffer.count)
            }
            if count > 0 {
                bytes.append(contentsOf: chunk[0..<count])
            } else if count == 0 {
                break
            } else if errno != EINTR {
                return .failure(ReadProblem(reason: Self.systemErrorDescription(errno)))
            }
        }
        let text = String(decoding: bytes, as: UTF8.self)
        guard text.utf8.elementsEqual(bytes) else {
            return .failure(ReadProblem(reason: "it is not UTF-8 text"))
        }
        return .success(text)
    }

    private static func systemErrorDescription(_ code: Int32) -> String {
        guard let message = strerror(code) else {
            return "error \(code)"
        }
        return String(cString: message)
    }
}
