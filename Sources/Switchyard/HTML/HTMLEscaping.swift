/// Text for the balancer's own HTML pages (the demo, the status page): `&`, `<`, `>`, `"` and `'` as entities, so
/// that names and messages from operators, backends and clients cannot become markup.
enum HTMLEscaping {
    static func escaped(_ text: some StringProtocol) -> String {
        var escaped = ""
        escaped.reserveCapacity(text.utf8.count)
        for character in text {
            switch character {
            case "&": escaped += "&amp;"
            case "<": escaped += "&lt;"
            case ">": escaped += "&gt;"
            case "\"": escaped += "&quot;"
            case "'": escaped += "&#39;"
            default: escaped.append(character)
            }
        }
        return escaped
    }
}
