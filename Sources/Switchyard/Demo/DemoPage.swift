/// The demo chat page. Its script opens `ws://` or `wss://` on the page's own host, so the same page works on
/// the http and the https address of the balancer.
enum DemoPage {
    static func html(forwardedFor: String, host: String, proto: String) -> String {
        """
        <!doctype html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <title>Switchyard demo chat</title>
        <style>
        body { font: 16px system-ui, sans-serif; max-width: 40em; margin: 2em auto; padding: 0 1em; }
        #log { border: 1px solid #ccc; height: 20em; overflow-y: auto; padding: .5em; background: #fafafa; }
        #log p { margin: .2em 0; }
        form { display: flex; gap: .5em; margin-top: .5em; }
        input { flex: 1; font: inherit; padding: .3em; }
        small { color: #666; }
        </style>
        </head>
        <body>
        <h1>Switchyard demo chat</h1>
        <p>This page comes from the demo tenant's backend, through the balancer.
        Open it in two tabs: messages appear in both at once, over a WebSocket.</p>
        <p><small>Host: \(escape(host)) · X-Forwarded-For: \(escape(forwardedFor)) · X-Forwarded-Proto: \(escape(proto)) ·
        <span id="state">connecting…</span></small></p>
        <div id="log"></div>
        <form id="form"><input id="text" autocomplete="off" placeholder="Say something" maxlength="500"><button>Send</button></form>
        <script>
        const log = document.getElementById("log");
        const state = document.getElementById("state");
        const socket = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/");
        socket.onopen = () => { state.textContent = "connected"; };
        socket.onclose = () => { state.textContent = "disconnected"; };
        socket.onmessage = (event) => {
          const line = document.createElement("p");
          line.textContent = event.data;
          log.appendChild(line);
          log.scrollTop = log.scrollHeight;
        };
        document.getElementById("form").onsubmit = (event) => {
          event.preventDefault();
          const input = document.getElementById("text");
          if (input.value && socket.readyState === WebSocket.OPEN) { socket.send(input.value); }
          input.value = "";
        };
        </script>
        </body>
        </html>

        """
    }

    private static func escape(_ text: String) -> String {
        HTMLEscaping.escaped(text.prefix(200))
    }
}
