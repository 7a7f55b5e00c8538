"""Docker health check of the hub and the proxy: does this local URL answer 200?

    python3 -I -S /opt/gpuhub/gpuhub/services/healthcheck.py http://127.0.0.1:8081/hub/health

Docker runs it every 2 s in each container (so that `invoke up` and `invoke restart` see
the hub healthy soon after it starts), which makes its cost a constant tax on the
machine. So the check starts and imports as little as it can: ``-I`` ignores the PYTHON*
variables and the user's site-packages, ``-S`` skips the ``site`` module, and a bare
socket stands in for urllib, which would import http.client and the email package for one
GET. Standard library only: with ``-S`` nothing from site-packages is importable.
Exit status 0 when the answer is 200, 1 otherwise (what Docker expects).
"""

import socket
import sys
from urllib.parse import urlsplit


def answers_200(url: str, timeout: float = 2.0) -> bool:
    """GET ``url`` (http, or https without checking the certificate: it is a local probe
    of a server whose certificate names the public host); True if the status is 200."""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout) as sock:
            if https:
                import ssl

                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                sock = context.wrap_socket(sock, server_hostname=parts.hostname)
            request = f"GET {parts.path or '/'} HTTP/1.0\r\nHost: {parts.netloc}\r\n\r\n"
            sock.sendall(request.encode())
            head = b""
            while b"\r\n" not in head and len(head) < 1024:
                chunk = sock.recv(1024)
                if not chunk:
                    break
                head += chunk
    except OSError:
        return False
    status_line = head.split(b"\r\n", 1)[0].split()
    return len(status_line) >= 2 and status_line[1] == b"200"


if __name__ == "__main__":
    sys.exit(0 if answers_200(sys.argv[1]) else 1)
