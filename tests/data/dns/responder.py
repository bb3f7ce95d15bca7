"""A tiny DNS responder for the resolver test: answers A queries from a table,
empty NOERROR for other types of a known name, NXDOMAIN otherwise, and logs
every question (so the test sees the search list at work). UDP only, stdlib
only; it serves until killed.

usage: responder.py ADDRESS READY_FILE LOG_FILE NAME=IPV4...
"""
import socket
import struct
import sys

address, ready, log_path = sys.argv[1:4]
table = {}
for entry in sys.argv[4:]:
    name, ip = entry.split("=")
    table[name.lower().rstrip(".").encode()] = socket.inet_aton(ip)

sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((address, 53))
open(ready, "w").close()
log = open(log_path, "a")

while True:
    data, peer = sock.recvfrom(4096)
    if len(data) < 17:
        continue
    tid, _flags, qdcount = struct.unpack(">HHH", data[:6])
    i, labels = 12, []
    while i < len(data) and data[i]:
        n = data[i]
        labels.append(data[i + 1 : i + 1 + n])
        i += 1 + n
    qname = b".".join(labels).lower()
    qtype, _qclass = struct.unpack(">HH", data[i + 1 : i + 5])
    question = data[12 : i + 5]
    log.write("%s %d\n" % (qname.decode("ascii", "replace"), qtype))
    log.flush()
    ip = table.get(qname)
    answer = b""
    if ip is None:
        rcode = 3
    else:
        rcode = 0
        if qtype == 1:
            answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 30, 4) + ip
    header = struct.pack(
        ">HHHHHH", tid, 0x8180 | rcode, 1, 1 if answer else 0, 0, 0
    )
    sock.sendto(header + question + answer, peer)
