import Foundation
import SwitchyardStore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The PostgreSQL store's password, read from `state_password_file`: the file's first line, and only from a file
/// no one else can read (it opens the whole fleet's configuration), as PostgreSQL's own `.pgpass` requires.
enum StatePassword {
    static func read(from path: String, for store: String) throws(StoreError) -> String {
        func refuse(_ reason: String) -> StoreError {
            .unavailable(path: store, reason: "state_password_file \(path) \(reason)")
        }
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw refuse("cannot be opened: \(String(cString: strerror(errno)))") }
        defer { close(descriptor) }
        var information = stat()
        guard fstat(descriptor, &information) == 0, information.st_mode & S_IFMT == S_IFREG else {
            throw refuse("is not a regular file")
        }
        let permissions = information.st_mode & 0o777
        guard permissions & 0o077 == 0 else {
            throw refuse(
                "is readable or writable by group or others (mode 0\(String(permissions, radix: 8))): chmod 600 \(path)"
            )
        }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while bytes.count <= 4096 {
            let count = Glibc.read(descriptor, &buffer, buffer.count)
            if count < 0, errno == EINTR { continue }
            guard count >= 0 else { throw refuse("cannot be read: \(String(cString: strerror(errno)))") }
            if count == 0 { break }
            bytes += buffer[0..<count]
        }
        // Split on bytes: as Characters, "\r\n" is one, and not "\n".
        var first = bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).first ?? []
        if first.last == UInt8(ascii: "\r") { first = first.dropLast() }
        let line = String(decoding: first, as: UTF8.self)
        guard !line.isEmpty, bytes.count <= 4096 else {
            throw refuse(bytes.count > 4096 ? "is over 4 KiB; it holds one line, the password" : "is empty")
        }
        return line
    }
}
