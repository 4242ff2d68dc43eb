import SwitchyardTLS
import Testing

/// Client-supplied text in log lines (the TLS server name, the request target): nothing it contains can forge a
/// line, reach the operator's terminal or end a quoted field.
@Suite("Log escaping")
struct LogEscapingTests {
    @Test("plain text is kept as it is")
    func plain() {
        #expect(LogEscaping.escaped("shop.test") == "shop.test")
        #expect(LogEscaping.escaped("/cart?id=7&x=%20") == "/cart?id=7&x=%20")
    }

    @Test(
        "CR, LF, ESC, quotes, backslashes and bytes outside ASCII become \\xHH",
        arguments: [
            ("a.test\r\nFORGED 200", "a.test\\x0D\\x0AFORGED 200"),
            ("\u{1B}[31mred", "\\x1B[31mred"),
            ("/a\"b", "/a\\x22b"),
            ("back\\slash", "back\\x5Cslash"),
            ("tab\there", "tab\\x09here"),
            ("é", "\\xC3\\xA9"),
            ("nul\u{0}", "nul\\x00"),
            ("del\u{7F}", "del\\x7F"),
        ]
    )
    func escaped(text: String, expected: String) {
        #expect(LogEscaping.escaped(text) == expected)
    }
}
