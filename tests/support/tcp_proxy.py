"""A TCP proxy the test controls, to cut a service off from the processes that use it and bring it back."""
import socket
import threading

from tests.support.waiting import free_port


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1", *, listen_host: str = "127.0.0.1",
                 listen_port: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.host = listen_host
        self.port = listen_port or free_port()
        self.lock = threading.Lock()
        self.connections: list[socket.socket] = []
        self.listener: socket.socket | None = None

    def start(self) -> "TcpProxy":
        """Accept connections again (after a cut, new ones are refused until this)."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def cut(self) -> None:
        """Drop every open connection and refuse new ones, like a database host gone from the network."""
        with self.lock:
            if self.listener:
                try:
                    self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close alone does not
                except OSError:
                    pass
                self.listener.close()
                self.listener = None
            for sock in self.connections:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self.connections.clear()

    stop = cut

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.connections += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


if __name__ == "__main__":
    # `python tcp_proxy.py LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT`: a proxy in a process of its own, for a
    # network namespace the test process is not in (tests/support/silent_link.py).
    import sys
    import time

    listen_host, listen_port, target_host, target_port = sys.argv[1:5]
    TcpProxy(int(target_port), target_host, listen_host=listen_host, listen_port=int(listen_port)).start()
    print("listening", flush=True)
    while True:
        time.sleep(3600)
