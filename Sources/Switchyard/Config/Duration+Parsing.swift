import NIOCore

extension TimeAmount {
    /// Why a duration could not be read; see ``TimeAmount/parseConfigurationDuration(_:)``.
    public enum DurationParsingFailure: Error, Equatable {
        /// Not an unsigned integer followed by one of the units `ms`, `s`, `m`, `h`, `d`.
        case malformed
        /// Well-formed but too long to be counted in nanoseconds.
        case tooLarge
    }

    /// What the configuration accepts, for error messages.
    static let durationSyntaxExample = "a duration such as 500ms, 2s, 5m or 1h"

    /// Reads a duration as written in the configuration: an unsigned decimal integer immediately followed by a unit,
    /// `ms`, `s`, `m`, `h` or `d` (`500ms`, `2s`, `5m`, `1h`, `30d`; a day is 24 hours).
    ///
    /// Deliberately strict: a bare number (`5`) is refused because its unit would be a guess, and so are signs,
    /// fractions, spaces and compound forms (`1m30s`). Zero is well-formed (`0s`); whether it is acceptable is for
    /// the caller to decide.
    public static func parseConfigurationDuration(_ text: String) -> Result<TimeAmount, DurationParsingFailure> {
        let digits = text.prefix(while: { $0.isASCII && $0.isNumber })
        let unit = text.dropFirst(digits.count)
        guard !digits.isEmpty else {
            return .failure(.malformed)
        }
        let nanosecondsPerUnit: Int64
        switch unit {
        case "ms": nanosecondsPerUnit = 1_000_000
        case "s": nanosecondsPerUnit = 1_000_000_000
        case "m": nanosecondsPerUnit = 60 * 1_000_000_000
        case "h": nanosecondsPerUnit = 3_600 * 1_000_000_000
        case "d": nanosecondsPerUnit = 86_400 * 1_000_000_000
        default: return .failure(.malformed)
        }
        guard let count = Int64(digits) else {
            return .failure(.tooLarge)
        }
        let (nanoseconds, overflow) = count.multipliedReportingOverflow(by: nanosecondsPerUnit)
        guard !overflow else {
            return .failure(.tooLarge)
        }
        return .success(.nanoseconds(nanoseconds))
    }

    /// The amount written the way the configuration writes it, in the largest unit that divides it exactly (`90s`,
    /// `5m`, `500ms`); used to quote defaults in error messages.
    var configurationDescription: String {
        let nanoseconds = self.nanoseconds
        let units: [(suffix: String, nanoseconds: Int64)] = [
            ("d", 86_400 * 1_000_000_000), ("h", 3_600 * 1_000_000_000), ("m", 60 * 1_000_000_000),
            ("s", 1_000_000_000), ("ms", 1_000_000),
        ]
        for unit in units where nanoseconds != 0 && nanoseconds % unit.nanoseconds == 0 {
            return "\(nanoseconds / unit.nanoseconds)\(unit.suffix)"
        }
        return "\(nanoseconds)ns"
    }
}
