#!/usr/bin/env python3
"""Import benchmark for reportd (run through bench/import.sh).

Prints:
  1. import throughput (parse + chunk + index, upload to `completed`) in MB/s
     for a ~10 MB Chinese text, a ~5 MB docx and a ~5 MB PDF, all generated
     here, one import at a time (IMPORT_WORKERS=1);
  2. the take-over time: an instance is SIGKILLed in the middle of an import
     on a shared Redis; how long until another instance has taken the job
     over (its log says so), with the heartbeat timeout it ran with.

Only the standard library; everything listens on 127.0.0.1 and everything
started here is stopped at the end.
"""

import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile

BIN = sys.argv[1]
HEARTBEAT = int(os.environ.get("HEARTBEAT_SECONDS", "5"))
TMP = tempfile.mkdtemp(prefix="reportd-import-bench.")
PROCS = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(env, name):
    port = free_port()
    full = {"PATH": os.environ["PATH"], "HOST": "127.0.0.1", "PORT": str(port), "DATA_DIR": TMP,
            "DATABASE_URL": f"sqlite://{TMP}/bench.db", "JWT_SECRET": "bench-secret-bench-secret-bench-secret-0",
            "LOG_FORMAT": "json", "RUST_LOG": "info", "IMPORT_WORKERS": "1", **env}
    log = open(os.path.join(TMP, f"{name}.log"), "w")
    p = subprocess.Popen([BIN], env=full, stdout=subprocess.DEVNULL, stderr=log, cwd=TMP)
    PROCS.append(p)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(base + "/healthz", timeout=1)
            return p, base, log.name
        except Exception:
            time.sleep(0.05)
    raise SystemExit(f"{name} did not start: {open(log.name).read()}")


def call(base, path, token=None, data=None, headers=None, method=None):
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers or {})
    if token:
        req.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read() or b"null")


def user(base, name):
    body = json.dumps({"username": name, "password": "correct horse battery"}).encode()
    call(base, "/auth/register", data=body, headers={"content-type": "application/json"})
    return call(base, "/auth/login", data=body, headers={"content-type": "application/json"})["access_token"]


def upload(base, token, filename, content):
    boundary = "----reportdbench%d" % random.randrange(10**9)
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return call(base, "/Import_Doc/", token, body, {"content-type": f"multipart/form-data; boundary={boundary}"})["task_id"]


def wait_done(base, token, task, limit=600):
    deadline = time.time() + limit
    while time.time() < deadline:
        s = call(base, f"/check_import_status/{task}", token)
        if s["status"] in ("completed", "failed"):
            return s
        time.sleep(0.02)
    raise SystemExit(f"task {task} did not finish")


# ------------------------------------------------------------------ inputs
PARAS = [
    "火星是太阳系八大行星之一，是太阳系由内往外数的第四颗行星，属于类地行星，直径约为地球的53%，质量为地球的14%。",
    "自古以来，火星就是人类观测和研究的重要对象；它的表面有大量的撞击坑、峡谷、沙丘和砾石，没有稳定的液态水体。",
    "二氧化碳为主的大气既稀薄又寒冷，沙尘悬浮其中，每年常有尘暴发生。火星两极皆有水冰与干冰组成的极冠，会随着季节消长。",
    "本报告第{n}节讨论了探测任务的预算、进度与风险，并给出了下一阶段的建议。",
]


def chinese_text(size):
    out, n, total = [], 0, 0
    while total < size:
        n += 1
        if n % 200 == 1:
            out.append(f"第{n // 200 + 1}章 火星探测\n\n")
        out.append(random.choice(PARAS).format(n=n) + "\n\n")
        total += len(out[-1].encode())
    return "".join(out).encode()


def docx(size):
    paras, n, total = [], 0, 0
    while total < size:
        n += 1
        text = random.choice(PARAS).format(n=n) + " Mars exploration report, paragraph %d." % n
        style = '<w:pPr><w:pStyle w:val="Heading1"/></w:pPr>' if n % 150 == 1 else ""
        paras.append(f"<w:p>{style}<w:r><w:t>{text}</w:t></w:r></w:p>")
        total += len(paras[-1])
    xml = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
           '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>'
           + "".join(paras) + "</w:body></w:document>")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="xml" ContentType="application/xml"/><Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>')
        z.writestr("_rels/.rels", '<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="word/document.xml"/></Relationships>')
        z.writestr("word/document.xml", xml)
        # Real documents of this size are mostly pictures: a stored image
        # brings the file to about 5 MB, as the figure asks.
        z.writestr("word/media/image1.png", random.randbytes(max(0, 5 * 1024 * 1024 - len(buf.getvalue()))),
                   compress_type=zipfile.ZIP_STORED)
    return buf.getvalue(), len(xml)


def pdf(size):
    """Pages of Latin text (Helvetica) and Chinese text (STSong-Light,
    UniGB-UCS2-H, no ToUnicode), uncompressed."""
    objs = {1: b"<< /Type /Catalog /Pages 2 0 R >>",
            3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
            4: b"<< /Type /Font /Subtype /Type0 /BaseFont /STSong-Light /Encoding /UniGB-UCS2-H /DescendantFonts [5 0 R] >>",
            5: b"<< /Type /Font /Subtype /CIDFontType0 /BaseFont /STSong-Light /CIDSystemInfo << /Registry (Adobe) /Ordering (GB1) /Supplement 4 >> /FontDescriptor 6 0 R >>",
            6: b"<< /Type /FontDescriptor /FontName /STSong-Light /Flags 6 /FontBBox [0 -200 1000 900] /ItalicAngle 0 /Ascent 880 /Descent -120 /CapHeight 700 /StemV 80 >>"}
    kids, n, total, page = [], 7, 0, 0
    while total < size:
        page += 1
        lines = [b"BT /F1 10 Tf 50 800 Td 12 TL"]
        for i in range(40):
            lines.append(b"(Page %d line %d: Mars exploration report, budget and schedule.) '" % (page, i))
        lines.append(b"/F2 10 Tf")
        for i in range(20):
            text = random.choice(PARAS).format(n=page * 100 + i)[:40]
            lines.append(b"<" + text.encode("utf-16-be").hex().encode() + b"> '")
        lines.append(b"ET")
        stream = b"\n".join(lines)
        objs[n] = b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream"
        objs[n + 1] = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /Font << /F1 3 0 R /F2 4 0 R >> >> /Contents %d 0 R >>" % n
        kids.append(n + 1)
        total += len(stream)
        n += 2
    objs[2] = b"<< /Type /Pages /Kids [" + b" ".join(b"%d 0 R" % k for k in kids) + b"] /Count %d >>" % len(kids)
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = {}
    for num in sorted(objs):
        offsets[num] = out.tell()
        out.write(b"%d 0 obj\n" % num + objs[num] + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (max(objs) + 1))
    for num in range(1, max(objs) + 1):
        out.write(b"%010d 00000 n \n" % offsets[num])
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (max(objs) + 1, xref))
    return out.getvalue(), page


def main():
    random.seed(7)
    results = []
    p, base, _ = start({}, "throughput")
    token = user(base, "bench")
    zh = chinese_text(10 * 1024 * 1024)
    dx, xml_len = docx(3 * 1024 * 1024)
    pf, pages = pdf(5 * 1024 * 1024)
    for name, content, note in [("zh.txt", zh, "Chinese text"),
                                ("report.docx", dx, f"docx, {xml_len / 1e6:.1f} MB of XML"),
                                ("report.pdf", pf, f"PDF, {pages} pages, Latin + CJK (UniGB-UCS2-H)")]:
        started = time.time()
        task = upload(base, token, name, content)
        done = wait_done(base, token, task)
        secs = time.time() - started
        assert done["status"] == "completed", done
        doc = call(base, f"/documents/{done['document_id']}?limit=1", token)
        mb = len(content) / (1024 * 1024)
        results.append(f"import {name:12s} {mb:6.2f} MB  {secs:6.2f} s  {mb / secs:6.2f} MB/s  "
                       f"{doc['chunk_count']} chunks  ({note})")
        print(results[-1], flush=True)
    p.terminate()
    p.wait()

    # ------------------------------------------------------------ take-over
    redis_port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", TMP], stdout=subprocess.DEVNULL)
    PROCS.append(redis)
    time.sleep(0.5)
    env = {"REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "REDIS_ENABLED": "1", "REDIS_TASK_STATUS_ENABLED": "1",
           "IMPORT_HEARTBEAT_TIMEOUT_SECONDS": str(HEARTBEAT), "IMPORT_STAGE_DELAY_MS": "3000"}
    a, base_a, _ = start(env, "a")
    token = user(base_a, "takeover")
    task = upload(base_a, token, "zh.txt", zh)
    while call(base_a, f"/check_import_status/{task}", token)["status"] != "processing":
        time.sleep(0.02)
    b, base_b, log_b = start(env, "b")
    time.sleep(1)
    a.send_signal(signal.SIGKILL)
    killed = time.time()
    taken = None
    while taken is None and time.time() - killed < 20 * HEARTBEAT:
        for line in open(log_b):
            if "taking over an import" in line:
                taken = time.time()
                break
        time.sleep(0.01)
    assert taken, "B never took the job over"
    done = wait_done(base_b, token, task)
    assert done["status"] == "completed", done
    delay = taken - killed
    results.append(f"take-over after SIGKILL: {delay:.2f} s with IMPORT_HEARTBEAT_TIMEOUT_SECONDS={HEARTBEAT} "
                   f"(ratio {delay / HEARTBEAT:.2f} of the timeout; aim <= 2)")
    print(results[-1], flush=True)
    print("\nsummary\n" + "\n".join(results))


try:
    main()
finally:
    for p in PROCS:
        if p.poll() is None:
            p.kill()
            p.wait()
    if os.environ.get("KEEP_TMP") == "1":
        print("logs kept in", TMP)
    else:
        shutil.rmtree(TMP, ignore_errors=True)
