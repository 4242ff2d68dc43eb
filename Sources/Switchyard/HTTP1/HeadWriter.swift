import NIOCore

/// Writes the heads the proxy forwards: the original bytes with hop-by-hop lines cut and the balancer's own
/// fields added. Nothing is decoded or re-encoded.
enum HeadWriter {
    /// Facts about the client connection that go into forwarding fields.
    struct ClientInfo {
        /// The client's IP address as text.
        var address: String
        /// `http` or `https`.
        var scheme: StaticString
    }

    /// Writes the request head for the backend into `output`.
    ///
    /// - Parameters:
    ///   - bytes: the client's bytes, the head at `head.start..<head.end`.
    ///   - dropped: lines not to forward, in ascending order.
    ///   - forwardedFor: values of the client's `X-Forwarded-For` fields, kept in front of the client address.
    ///   - upgrade: whether the request's protocol switch is honoured: its `Upgrade` (and `HTTP2-Settings`) go
    ///     out with `Connection: upgrade`; otherwise they are dropped and the request is plain HTTP.
    ///   - requestID: the `X-Request-ID` to send, if any (the client's own lines are among `dropped`).
    static func writeRequest(
        _ bytes: UnsafeRawBufferPointer,
        head: RequestHead,
        dropped: [Range<Int>],
        forwardedFor: [Range<Int>],
        client: ClientInfo,
        upgrade: Bool,
        requestID: RequestID? = nil,
        into output: inout ByteBuffer
    ) {
        // Everything but the final empty line, minus the dropped lines; an absolute-form target goes as origin-form.
        var position = head.start
        if let absolute = head.absoluteForm {
            output.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[head.start..<head.target.lowerBound]))
            if absolute.originForm.isEmpty || bytes[absolute.originForm.lowerBound] != UInt8(ascii: "/") {
                output.writeStaticString("/")
            }
            output.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[absolute.originForm]))
            position = head.target.upperBound
        }
        for line in dropped {
            output.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[position..<line.lowerBound]))
            position = line.upperBound
        }
        output.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[position..<(head.end - 2)]))
        if let authority = head.absoluteForm?.authority {
            output.writeStaticString("Host: ")
            output.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[authority]))
            output.writeStaticString("\r\n")
        }

        if upgrade, let protocols = head.upgrade {
            output.writeStaticString("Upgrade: ")
            output.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[protocols]))
            if let settings = head.http2Settings {
                output.writeStaticString("\r\nHTTP2-Settings: ")
                output.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[settings]))
                output.writeStaticString("\r\nConnection: upgrade, HTTP2-Settings\r\n")
            } else {
                output.writeStaticString("\r\nConnection: upgrade\r\n")
            }
        }
        output.writeStaticString("X-Forwarded-For: ")
        for value in forwardedFor {
            output.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[value]))
            output.writeStaticString(", ")
        }
        output.writeString(client.address)
        output.writeStaticString("\r\nX-Real-IP: ")
        output.writeString(client.address)
        output.writeStaticString("\r\nX-Forwarded-Proto: ")
        output.writeStaticString(client.scheme)
        if let host = head.routingHost {
            output.writeStaticString("\r\nX-Forwarded-Host: ")
            output.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[host]))
        }
        if let requestID {
            output.writeStaticString("\r\nX-Request-ID: ")
            requestID.write(from: bytes, into: &output)
        }
        output.writeStaticString("\r\n\r\n")
    }

    /// How the balancer's connection to the client continues after a response, which the forwarded head must
    /// announce when it differs from what the backend said.
    enum ClientConnection {
        /// HTTP/1.1 keep-alive: nothing to announce.
        case keepAlive
        /// HTTP/1.0 keep-alive: `Connection: keep-alive` must be sent.
        case keepAliveHTTP10
        /// The connection closes after this response: `Connection: close` must be sent.
        case close
    }

    /// Writes a rewritten response head: the backend's head without its hop-by-hop lines, plus the `Connection`
    /// field for the client connection and, for sticky sessions, a `Set-Cookie` line (with its CRLF).
    static func writeResponse(
        _ bytes: UnsafeRawBufferPointer,
        end: Int,
        dropped: [Range<Int>],
        connection: ClientConnection,
        setCookie: String? = nil,
        into output: inout ByteBuffer
    ) {
        var position = 0
        for line in dropped {
            output.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[position..<line.lowerBound]))
            position = line.upperBound
        }
        output.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[position..<(end - 2)]))
        switch connection {
        case .keepAlive:
            break
        case .keepAliveHTTP10:
            output.writeStaticString("Connection: keep-alive\r\n")
        case .close:
            output.writeStaticString("Connection: close\r\n")
        }
        if let setCookie {
            output.writeString(setCookie)
        }
        output.writeStaticString("\r\n")
    }
}
