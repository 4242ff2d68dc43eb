import NIOCore
import Yams

/// A node of the YAML tree together with its key path and line, whose accessors turn every mismatch into a
/// ``ConfigurationError`` naming both.
///
/// Scalars are read by what the key expects, not by the type YAML guesses from their spelling: `state: 2024` is the
/// path `2024` and `max_headers: "100"` is the number 100. Booleans are the exception: only a plain `true` or `false`
/// is one (see ``bool()``). An empty value (`key:`, `~`, `null`) stands apart too: an empty mapping or list where one
/// is expected, and an error where a scalar is.
struct ConfigurationNode {
    /// The YAML node.
    var node: Node
    /// Key path from the document root, e.g. `tenants[1].health.interval`; empty for the root.
    var path: String
    /// The line errors about this node name: its key's line when it is the value of a mapping entry and not a
    /// scalar (a block mapping or list starts on the line after its key), its own line otherwise.
    var line: Int?
    /// The file, for errors.
    var file: String

    init(node: Node, path: String, line: Int?, file: String) {
        self.node = node
        self.path = path
        self.line = line
        self.file = file
    }

    /// An error about this node.
    func error(_ reason: String) -> ConfigurationError {
        ConfigurationError(file: self.file, line: self.line, key: self.path, reason: reason)
    }

    /// Whether the node is an empty value: nothing after the colon, `~` or `null` (unquoted).
    ///
    /// Resolving a plain scalar's tag runs the resolver's regular expressions (bool, int, float, null, timestamp)
    /// over its text, which is most of the time of reading a file with 100,000 domains; so the tag is only resolved
    /// for a scalar short enough to be `~`, `null`, `Null` or `NULL`, or tagged `!!null` explicitly.
    var isNull: Bool {
        guard case .scalar(let scalar) = self.node else {
            return false
        }
        guard scalar.string.utf8.count <= 4 || scalar.tag.rawValue == Tag.Name.null.rawValue else {
            return false
        }
        return self.node.tag.rawValue == Tag.Name.null.rawValue
    }

    /// How the node is described after "found" in an error.
    var foundDescription: String {
        switch self.node {
        case .mapping:
            return "a mapping"
        case .sequence:
            return "a list"
        case .alias:
            return "an alias"
        case .scalar(let scalar):
            return self.isNull ? "no value" : Self.quoted(scalar.string)
        }
    }

    /// The text of a scalar, refusing an empty value, a mapping or a list.
    ///
    /// - Parameter expected: what the key expects, after "expected", e.g. `"a path"`.
    func scalarText(expected: String) throws(ConfigurationError) -> String {
        guard case .scalar(let scalar) = self.node, !self.isNull else {
            throw self.error("expected \(expected), found \(self.foundDescription)")
        }
        return scalar.string
    }

    /// A non-empty string.
    func nonEmptyString(expected: String) throws(ConfigurationError) -> String {
        let text = try self.scalarText(expected: expected)
        guard !text.isEmpty else {
            throw self.error("must not be empty; expected \(expected)")
        }
        return text
    }

    /// A decimal integer in `range` (underscores between digits allowed, as YAML allows them).
    func integer(in range: ClosedRange<Int>) throws(ConfigurationError) -> Int {
        let expected: String
        if range.upperBound == Int.max {
            expected = "an integer of at least \(range.lowerBound)"
        } else {
            expected = "an integer from \(range.lowerBound) to \(range.upperBound)"
        }
        let text = try self.scalarText(expected: expected)
        let digits = text.filter { $0 != "_" }
        guard !text.hasPrefix("_"), let value = Int(digits) else {
            throw self.error("expected \(expected), found \(self.foundDescription)")
        }
        guard range.contains(value) else {
            throw self.error("\(value) is out of range; expected \(expected)")
        }
        return value
    }

    /// A YAML boolean: `true` or `false` written plain (YAML 1.2's core schema, which also allows `True`, `TRUE`,
    /// `False` and `FALSE`).
    ///
    /// Unlike other scalars, a boolean is not read by what the key expects: a quoted `"true"` is a string, and
    /// YAML 1.1's `yes`, `no`, `on` and `off` are refused rather than guessed at: a flag whose spelling another tool
    /// reads differently (`"false"` is true in many languages, `off` a string in YAML 1.2) must not load.
    func bool() throws(ConfigurationError) -> Bool {
        let expected = "true or false"
        let text = try self.scalarText(expected: expected)
        guard case .scalar(let scalar) = self.node, scalar.style == .plain || scalar.style == .any else {
            throw self.error(
                "expected \(expected), found the quoted string \(self.foundDescription); write true or false "
                    + "without quotes"
            )
        }
        switch text {
        case "true", "True", "TRUE":
            return true
        case "false", "False", "FALSE":
            return false
        default:
            var reason = "expected \(expected), found \(self.foundDescription)"
            if text.utf8.count <= 3, ["yes", "no", "on", "off", "y", "n"].contains(text.lowercased()) {
                reason += " (YAML 1.1 spellings are not booleans here; write true or false)"
            }
            throw self.error(reason)
        }
    }

    /// A duration greater than zero, such as `500ms`, `2s`, `5m` or `1h`.
    func positiveDuration() throws(ConfigurationError) -> TimeAmount {
        let expected = TimeAmount.durationSyntaxExample
        let text = try self.scalarText(expected: expected)
        switch TimeAmount.parseConfigurationDuration(text) {
        case .failure(.malformed):
            var reason = "expected \(expected), found \(self.foundDescription)"
            if !text.isEmpty, text.allSatisfy({ $0.isASCII && $0.isNumber }) {
                reason += " (a number needs a unit: ms, s, m, h or d)"
            }
            throw self.error(reason)
        case .failure(.tooLarge):
            throw self.error("\(Self.quoted(text)) is too long a duration")
        case .success(let amount):
            guard amount > .zero else {
                throw self.error("must be greater than zero; expected \(expected)")
            }
            return amount
        }
    }

    /// The items of a list of scalars, or, if `allowingSingle`, a lone scalar as a list of one. An empty value is an
    /// empty list.
    ///
    /// The items keep their own paths (`listen.http[1]`); a lone scalar keeps the key's path.
    ///
    /// - Parameters:
    ///   - listDescription: what the key expects, e.g. `"a list of domain names"`.
    ///   - itemDescription: what each item should be, e.g. `"a domain name"`.
    func stringList(
        allowingSingle: Bool,
        listDescription: String,
        itemDescription: String
    ) throws(ConfigurationError) -> [(text: String, node: ConfigurationNode)] {
        if self.isNull {
            return []
        }
        switch self.node {
        case .sequence(let sequence):
            var items: [(text: String, node: ConfigurationNode)] = []
            for (index, item) in sequence.enumerated() {
                let child = ConfigurationNode(
                    node: item,
                    path: "\(self.path)[\(index)]",
                    line: item.mark?.line ?? self.line,
                    file: self.file
                )
                items.append((try child.scalarText(expected: itemDescription), child))
            }
            return items
        case .scalar where allowingSingle:
            return [(try self.scalarText(expected: itemDescription), self)]
        default:
            let single = allowingSingle ? " (or a single one)" : ""
            throw self.error("expected \(listDescription)\(single), found \(self.foundDescription)")
        }
    }

    /// The items of a list; an empty value is an empty list.
    ///
    /// - Parameter description: what the key expects, e.g. `"a list of tenants"`.
    func list(description: String) throws(ConfigurationError) -> [ConfigurationNode] {
        if self.isNull {
            return []
        }
        guard case .sequence(let sequence) = self.node else {
            throw self.error("expected \(description), found \(self.foundDescription)")
        }
        return sequence.enumerated().map { index, item in
            ConfigurationNode(node: item, path: "\(self.path)[\(index)]", line: item.mark?.line, file: self.file)
        }
    }

    /// The entries of a mapping whose keys must all be among `acceptedKeys`; an empty value is an empty mapping.
    ///
    /// An unknown key is an error naming it and listing the accepted ones, so that a typo is never silently ignored.
    func mapping(acceptedKeys: [String]) throws(ConfigurationError) -> ConfigurationMapping {
        if self.isNull {
            return ConfigurationMapping(owner: self, entries: [:])
        }
        guard case .mapping(let mapping) = self.node else {
            let keys = acceptedKeys.joined(separator: ", ")
            throw self.error("expected a mapping with the keys \(keys); found \(self.foundDescription)")
        }
        var entries: [String: ConfigurationNode] = [:]
        for (keyNode, value) in mapping {
            let keyLine = keyNode.mark?.line ?? self.line
            guard case .scalar(let keyScalar) = keyNode else {
                throw ConfigurationError(
                    file: self.file,
                    line: keyLine,
                    key: self.path,
                    reason: "a key must be a plain name; accepted keys: \(acceptedKeys.joined(separator: ", "))"
                )
            }
            let key = keyScalar.string
            let path = self.path.isEmpty ? key : "\(self.path).\(key)"
            guard acceptedKeys.contains(key) else {
                // The key is the operator's text, so the path names it abbreviated, as the reason quotes it.
                let shownKey = ConfigurationError.abbreviated(key)
                throw ConfigurationError(
                    file: self.file,
                    line: keyLine,
                    key: self.path.isEmpty ? shownKey : "\(self.path).\(shownKey)",
                    reason: Self.unknownKeyReason(key, acceptedKeys: acceptedKeys)
                )
            }
            let line: Int?
            if case .scalar = value {
                line = value.mark?.line ?? keyLine
            } else {
                line = keyLine
            }
            entries[key] = ConfigurationNode(node: value, path: path, line: line, file: self.file)
        }
        return ConfigurationMapping(owner: self, entries: entries)
    }

    /// See ``ConfigurationError/quoted(_:)``: how errors quote an operator's value.
    private static func quoted(_ text: some StringProtocol) -> String {
        ConfigurationError.quoted(text)
    }

    private static func unknownKeyReason(_ key: String, acceptedKeys: [String]) -> String {
        var reason = "unknown key \(Self.quoted(key))"
        // A hint needs an edit distance of at most 2, and the distance is at least the difference in length, so a
        // key much longer than every accepted one (a huge value pasted as a key) is not compared at all.
        let count = key.count
        let closest = acceptedKeys.lazy.filter { abs($0.count - count) <= 2 }
            .map { (key: $0, distance: Self.editDistance($0, key.lowercased())) }
            .min { $0.distance < $1.distance }
        if let closest, closest.distance <= min(2, max(1, count / 3)) {
            reason += " (did you mean '\(closest.key)'?)"
        }
        return reason + "; accepted keys: \(acceptedKeys.joined(separator: ", "))"
    }

    /// Levenshtein distance, for "did you mean" hints.
    private static func editDistance(_ a: String, _ b: String) -> Int {
        let b = Array(b)
        var previous = Array(0...b.count)
        for (i, characterOfA) in a.enumerated() {
            var current = [i + 1]
            for (j, characterOfB) in b.enumerated() {
                let substitution = previous[j] + (characterOfA == characterOfB ? 0 : 1)
                current.append(min(previous[j + 1] + 1, current[j] + 1, substitution))
            }
            previous = current
        }
        return previous[b.count]
    }
}

/// The entries of a YAML mapping whose keys have been checked, see ``ConfigurationNode/mapping(acceptedKeys:)``.
struct ConfigurationMapping {
    /// The mapping itself, for errors about a missing key.
    var owner: ConfigurationNode
    /// Values by key.
    var entries: [String: ConfigurationNode]

    /// The value of `key`, `nil` if the key is absent.
    subscript(key: String) -> ConfigurationNode? {
        self.entries[key]
    }

    /// The value of `key`, or an error on the mapping naming the missing key and what it should hold.
    func required(_ key: String, expected: String) throws(ConfigurationError) -> ConfigurationNode {
        guard let value = self.entries[key] else {
            let path = self.owner.path.isEmpty ? key : "\(self.owner.path).\(key)"
            throw ConfigurationError(
                file: self.owner.file,
                line: self.owner.line,
                key: path,
                reason: "is required: \(expected)"
            )
        }
        return value
    }
}
