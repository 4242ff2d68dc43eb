import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The process's resident memory and descriptors, as Prometheus' `process_*` metrics report them: read from
/// `/proc/self` on Linux, `nil` where it is not there.
struct ProcessStatistics {
    var residentBytes: Int?
    var openDescriptors: Int?
    var descriptorLimit: Int?

    static func current() -> ProcessStatistics {
        var statistics = ProcessStatistics()
        // statm: size resident shared text lib data dt, in pages.
        if let statm = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) {
            let fields = statm.split(separator: " ")
            if fields.count > 1, let pages = Int(fields[1]) {
                statistics.residentBytes = pages * Int(sysconf(Int32(_SC_PAGESIZE)))
            }
        }
        if let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") {
            // One of them is the directory being listed.
            statistics.openDescriptors = max(0, entries.count - 1)
        }
        var limit = rlimit()
        if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 {
            statistics.descriptorLimit = Int(limit.rlim_cur)
        }
        return statistics
    }
}
