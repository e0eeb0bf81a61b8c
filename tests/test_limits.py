"""What the app accepts and what it costs: extreme shapes, a text-chunk bomb and the pixel cap are refused with a
sentence or handled within 2 GB of peak memory (each in a child process under an address-space limit, with its
peak resident memory measured there); no server path reaches a visitor; the colorization queue is bounded and
fair between clients. Random-initialised weights: plumbing and memory, not colours."""
from __future__ import annotations

import struct
import threading
import time
import zlib
from pathlib import Path

import gradio as gr
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import app
import colorizers
from fairqueue import Busy, FairQueue, client_key, fair, trusted_proxies_from_env
from tests.helpers import camera_photo, free_port, random_image, run_memory_child

SIX = ",".join(colorizers.MODEL_NAMES)
PEAK_LIMIT_MB = 2000  # the target: under 2 GB for any accepted upload


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def grey_png(width: int, height: int, extra: bytes = b"") -> bytes:
    """A mid-grey 8-bit PNG of any shape, written directly (PIL would take long for 16,000,000 rows): tiny files."""
    row = b"\0" + b"\x80" * width
    compressor = zlib.compressobj(9)
    body, left = [], height
    while left:
        n = min(left, 65536)
        body.append(compressor.compress(row * n))
        left -= n
    data = b"".join(body) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + extra + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def noisy_png() -> bytes:
    import io
    buffer = io.BytesIO()
    random_image(120, 160).save(buffer, "PNG")
    return buffer.getvalue()


def text_chunk_bomb(megabytes: int = 200) -> bytes:
    """An 8x8 PNG with a zTXt chunk that inflates to ``megabytes`` MB (a 200 KB file)."""
    compressor = zlib.compressobj(9)
    text = b"".join(compressor.compress(b"\0" * (1 << 20)) for _ in range(megabytes)) + compressor.flush()
    return grey_png(8, 8, _chunk(b"zTXt", b"Comment\0\0" + text))


FILES = {
    "tall-1x16000000.png": lambda: grey_png(1, 16_000_000),
    "wide-16000000x1.png": lambda: grey_png(16_000_000, 1),
    "text-bomb.png": text_chunk_bomb,
    "side-244x65535.png": lambda: grey_png(244, 65_535),  # the tallest
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("limits")
    for name, make in FILES.items():
        (folder / name).write_bytes(make())
    return folder


@pytest.mark.parametrize("name, models, refused", [
    ("tall-1x16000000.png", SIX, "its height is over the limit of 65,535 pixels per side"),
    ("wide-16000000x1.png", "cnn", "its width is over the limit of 65,535 pixels per side"),
    ("text-bomb.png", SIX, "carries a text block (metadata) too large to read safely"),
])
def test_extreme_inputs_are_refused_or_handled_within_the_memory_bound(random_weights_root, files, name, models,
                                                                       refused):
    result = run_memory_child("one", random_weights_root, models, files / name)
    print(name, result)  # the measured peak, for the record (pytest -s)
    if refused:
        assert refused in result.get("refused", ""), result
        assert result["peak_mb"] - result["baseline_mb"] < 100  # refused from the header, before decoding
    else:
        assert "refused" not in result and result["results"] == len(models.split(","))
        assert result["size"] == list(Image.open(files / name).size)
    assert result["peak_mb"] < PEAK_LIMIT_MB, result


def test_the_heaviest_accepted_compares_one_after_another_stay_within_the_memory_bound(random_weights_root, files,
                                                                                       tmp_path, app_env):
    """A long-running server takes any sequence of accepted requests: the heaviest ones (the widest accepted shape
    and the 16 MP cap in colour, which adds reference mode's scores; the tallest shape in grey) through the Compare
    button's handler one after another in one process. The peak stays under 2 GB and each request's memory is
    handed back (glibc kept a finished request's freed heap: 2.5 GB stayed resident)."""
    camera_photo(244, 65_535, seed=1).save(tmp_path / "colour-65535x244.png", compress_level=1)
    camera_photo(4000, 4000).save(tmp_path / "colour-4000x4000.jpg", quality=90)
    photos = [tmp_path / "colour-65535x244.png", files / "side-244x65535.png", tmp_path / "colour-4000x4000.jpg"]
    result = run_memory_child("sequence", random_weights_root, SIX, *photos)
    print(result)  # the measured peaks, for the record (pytest -s)
    requests = result["requests"]
    assert [r["results"] for r in requests] == [6] * len(photos)
    assert [r["scored"] for r in requests] == [True, False, True]  # colour photos get reference mode
    assert result["peak_mb"] < PEAK_LIMIT_MB, result
    for request in requests:  # what a request leaves resident is near what the process held before it
        assert request["after_mb"] < result["baseline_mb"] + 600, result


def test_pixel_cap_message_has_no_rounding_contradiction(tmp_path):
    path = tmp_path / "just-over.png"
    path.write_bytes(grey_png(4001, 4000))
    with pytest.raises(gr.Error) as err:
        app.read_image(path, 16_000_000)
    assert err.value.message == ("just-over.png is 4001×4000 = 16,004,000 pixels; the limit is 16,000,000 pixels "
                                 "(16 megapixels). Please upload a smaller version of the photo.")
    path.write_bytes(grey_png(4000, 4000))
    assert app.read_image(path, 16_000_000).size == (4000, 4000)  # exactly at the cap is accepted


@pytest.mark.parametrize("content, sentence", [
    (b"", "is not an image this app can read"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "is not an image this app can read"),
    (lambda: noisy_png()[:3000], "could not be decoded"),
])
def test_every_refused_file_gets_a_sentence_without_server_paths(tmp_path, content, sentence):
    folder = tmp_path / "deep" / "server" / "folder"
    folder.mkdir(parents=True)
    path = folder / "upload.png"
    path.write_bytes(content() if callable(content) else content)
    with pytest.raises(gr.Error) as err:
        app.read_image(path, 16_000_000)
    assert sentence in err.value.message and "upload.png" in err.value.message
    assert str(folder) not in err.value.message and "/deep/" not in err.value.message
    with pytest.raises(gr.Error, match="did not arrive completely"):
        app.read_image(folder / "gone.png", 16_000_000)
    with pytest.raises(gr.Error, match="did not arrive as a file"):
        app.read_image(12345, 16_000_000)


def test_hide_paths_keeps_names_and_urls():
    text = ("no weights for 'cnn': /srv/app/weights/cnn/config.json not found. Train it with "
            "`python -m train cnn --out /srv/app/weights`; see https://huggingface.co/owner/repo/tree/main")
    assert app.hide_paths(text) == ("no weights for 'cnn': config.json not found. Train it with "
                                    "`python -m train cnn --out weights`; see https://huggingface.co/owner/repo/tree/main")


def test_model_status_shows_no_server_path(tmp_path):
    reason = f"no weights for 'cnn': {tmp_path}/w/cnn/config.json not found"
    status = app.model_status({}, {"cnn": reason}, str(tmp_path / "w"))
    assert str(tmp_path) not in status and "(weights: `w`)" in status and "config.json not found" in status
    assert "(weights: `bundled`)" in app.model_status({}, {}, None)


def test_model_names_that_are_not_names_get_a_sentence(random_weights_root):
    available, _ = colorizers.load_colorizers(["cnn"], source=random_weights_root)
    for names, sentence in [(7, "must be given as a list of names"), ([7], "Not available: 7"),
                            ([{"a": 1}], "Not available: {'a': 1}"), ("cnn", None)]:
        if sentence is None:
            assert list(app._choose(names, available)) == ["cnn"]
        else:
            with pytest.raises(gr.Error, match=sentence):
                app._choose(names, available)


@pytest.fixture(scope="module")
def server(app_env, random_weights_root):
    available, unavailable = colorizers.load_colorizers(["cnn"], source=random_weights_root)
    # One trusted proxy: the test's clients act as it, appending the visitor's address to X-Forwarded-For.
    demo = app.build_demo(available, unavailable, app.Settings(max_pixels=1_000_000, weights=random_weights_root,
                                                               trusted_proxies=1))
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True)
    try:
        yield demo, Client(url, verbose=False)
    finally:
        demo.close()


def test_colorize_endpoint_refuses_a_non_string_model_with_a_sentence(server, tmp_path):
    _, client = server
    photo = tmp_path / "p.png"
    photo.write_bytes(grey_png(64, 48))
    for model in (5, ["cnn"], None):
        with pytest.raises(AppError, match="must be given by its name"):
            client.predict(handle_file(str(photo)), model, api_name="/colorize")
    assert Image.open(client.predict(handle_file(str(photo)), "cnn", api_name="/colorize")).size == (64, 48)


# ---------------------------------------------------------------------------------------------------- queue


def test_a_busy_client_cannot_hold_others_up():
    """One slot; client A queues four requests, then B one: B runs right after A's running request, not after all
    of A's. A's fifth waiting request and anything over the total are refused at once, with a sentence."""
    queue = FairQueue(slots=1, max_waiting=6, per_client=4)
    order, release = [], threading.Event()
    first_running = threading.Event()

    def job(client, tag):
        try:
            with queue.slot(client):
                if tag == "A0":
                    first_running.set()
                    release.wait(10)
                order.append(tag)
        except Busy as err:
            order.append(f"{tag} busy: {err}")

    threads = [threading.Thread(target=job, args=("A", "A0"))]
    threads[0].start()
    assert first_running.wait(10)
    for i in range(1, 5):
        threads.append(threading.Thread(target=job, args=("A", f"A{i}")))
        threads[-1].start()
        while queue.waiting < i:
            time.sleep(0.01)
    job("A", "A5")  # a fifth waiting request of A's: refused at once
    assert order[-1].startswith("A5 busy: You already have 4 photos waiting")
    threads.append(threading.Thread(target=job, args=("B", "B0")))
    threads[-1].start()
    while queue.waiting < 5:
        time.sleep(0.01)
    threads.append(threading.Thread(target=job, args=("C", "C0")))
    threads[-1].start()
    while queue.waiting < 6:
        time.sleep(0.01)
    job("D", "D0")  # over the total
    assert order[-1].startswith("D0 busy: The app is busy")
    release.set()
    for t in threads:
        t.join(10)
    served = [tag for tag in order if "busy" not in tag]
    assert served[:4] == ["A0", "A1", "B0", "C0"]  # each waiting client in turn
    assert sorted(served[4:]) == ["A2", "A3", "A4"]


def test_fair_handlers_get_the_request_and_refuse_when_busy():
    queue = FairQueue(slots=1, max_waiting=0)
    seen = []

    def handler(photo, model):
        seen.append((photo, model))
        return "ok"

    wrapped = fair(handler, queue)
    request = gr.Request(client={"host": "10.1.2.3"})
    assert wrapped("p", "cnn", request) == "ok" and seen == [("p", "cnn")]
    assert list(__import__("inspect").signature(wrapped).parameters) == ["photo", "model", "request"]
    with queue.slot("someone"):  # the one slot is taken and no one may wait
        with pytest.raises(gr.Error, match="The app is busy"):
            wrapped("p", "cnn", request)
    assert client_key(request, 0) == "10.1.2.3"
    assert client_key(None, 0) == "unknown"


def _request(peer: str, forwarded: str | None = None) -> gr.Request:
    return gr.Request(client={"host": peer}, headers={"x-forwarded-for": forwarded} if forwarded else {})


def test_client_addresses_come_only_from_trusted_proxies():
    """X-Forwarded-For counts only as far as trusted proxies wrote it: with none, the connection's address is the
    client whatever the header says; with n, the n-th address from the right (the one the outermost trusted proxy
    appended). A client's own entries sit left of it and are never used."""
    spoofed = "203.0.113.9, 198.51.100.20"
    assert client_key(_request("10.0.0.5", spoofed), 0) == "10.0.0.5"
    assert client_key(_request("10.0.0.5", spoofed), 1) == "198.51.100.20"  # the proxy (10.0.0.5) appended it
    assert client_key(_request("10.0.0.5", spoofed), 2) == "203.0.113.9"
    assert client_key(_request("10.0.0.5", "198.51.100.20"), 3) == "198.51.100.20"  # a short chain: its left end
    assert client_key(_request("10.0.0.5"), 1) == "10.0.0.5"
    assert client_key(_request("10.0.0.5", "198.51.100.20:4711"), 1) == "198.51.100.20"  # ports do not count
    # One IPv6 client is its /64: cycling through its 2^64 addresses does not make it many visitors.
    one, other = _request("10.0.0.5", "2001:db8:1:2::1"), _request("10.0.0.5", "2001:db8:1:2:ffff::9")
    assert client_key(one, 1) == client_key(other, 1) == "2001:db8:1:2::/64"
    assert client_key(_request("2001:db8:1:2::1"), 0) == "2001:db8:1:2::/64"
    assert trusted_proxies_from_env({}) == 0 and trusted_proxies_from_env({"SPACE_ID": "owner/space"}) == 1
    assert trusted_proxies_from_env({"COLORIZERS_TRUSTED_PROXIES": "2", "SPACE_ID": "o/s"}) == 2
    with pytest.raises(ValueError, match="COLORIZERS_TRUSTED_PROXIES"):
        trusted_proxies_from_env({"COLORIZERS_TRUSTED_PROXIES": "-1"})
    assert app.Settings.from_env({"COLORIZERS_TRUSTED_PROXIES": "0"}).trusted_proxies == 0


def test_made_up_forwarded_addresses_do_not_bypass_the_per_client_limit():
    """One client whose every request carries another made-up X-Forwarded-For address is still one client: one
    request runs, four wait and the rest are refused, with the per-client sentence (not the "busy" one)."""
    queue = FairQueue(slots=1, max_waiting=16, per_client=4)
    release, running = threading.Event(), threading.Event()

    def hold():
        running.set()
        release.wait(10)
        return "ok"

    outcomes, lock = [], threading.Lock()

    def send(i, hops, peer, forwarded):
        try:
            result = fair(hold, queue, hops)(_request(peer, forwarded))
        except gr.Error as err:
            result = err.message
        with lock:
            outcomes.append(result)

    for hops, peer, forwarded in [(0, "198.51.100.7", "10.9.{i}.1"),  # straight to the app
                                  (1, "10.0.0.1", "10.9.{i}.1, 198.51.100.7")]:  # behind one proxy
        outcomes.clear()
        running.clear()
        release.clear()
        threads = [threading.Thread(target=send, args=(0, hops, peer, forwarded.format(i=0)))]
        threads[0].start()
        assert running.wait(10)
        for i in range(1, 12):
            threads.append(threading.Thread(target=send, args=(i, hops, peer, forwarded.format(i=i))))
            threads[-1].start()
        deadline = time.monotonic() + 10
        while queue.waiting + len(outcomes) < 11 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert queue.waiting == 4, (hops, queue.waiting)
        refused = list(outcomes)
        assert len(refused) == 7 and all("You already have 4 photos waiting" in r for r in refused), refused
        release.set()
        for t in threads:
            t.join(10)
        assert outcomes.count("ok") == 5 and queue.waiting == 0


def test_a_flood_with_made_up_addresses_leaves_room_for_other_visitors(server, tmp_path, monkeypatch):
    """Through the running app behind one trusted proxy: eight requests of one visitor, each with a made-up
    address of its own in front of the one the proxy appended, get one running and four waiting; the rest are told
    they already have photos waiting, and another visitor still gets in."""
    from colorizers import compare
    predict = compare.predict_native_ab

    def slow_predict(*args, **kwargs):
        time.sleep(0.5)
        return predict(*args, **kwargs)

    monkeypatch.setattr(compare, "predict_native_ab", slow_predict)
    demo, _ = server
    photo = tmp_path / "p.png"
    random_image(48, 64).save(photo)
    flood = [Client(demo.local_url, verbose=False, headers={"X-Forwarded-For": f"10.9.{i}.1, 198.51.100.7"})
             for i in range(8)]
    other = Client(demo.local_url, verbose=False, headers={"X-Forwarded-For": "198.51.100.8"})
    jobs = [client.submit(handle_file(str(photo)), "cnn", api_name="/colorize") for client in flood]
    time.sleep(0.5)
    jobs.append(other.submit(handle_file(str(photo)), "cnn", api_name="/colorize"))
    outcomes = []
    for job in jobs:
        try:
            outcomes.append(Image.open(job.result(timeout=120)).size)
        except AppError as err:
            outcomes.append(str(err))
    assert outcomes.count((64, 48)) == 6, outcomes  # five of the flood's and the other visitor's
    assert outcomes[-1] == (64, 48)
    assert sum("You already have 4 photos waiting" in str(o) for o in outcomes) == 3, outcomes


def test_queued_photos_of_one_visitor_do_not_hold_up_another(server, tmp_path, monkeypatch):
    """Through the running app: visitor A sends four photos at once, then visitor B one; B's comes back before A's
    last two (first come, first served would put it after all four). Each colorization is held for 1.5 s and B's
    photo is sent 0.5 s after A's, so when it arrives A's first is still running and the other three wait: B runs
    after A's first and the one that was in turn before B came (an earlier version sent B after A's first had
    already finished, and then B is rightly fourth: one done, one running, one in turn)."""
    from colorizers import compare
    predict = compare.predict_native_ab

    def slow_predict(*args, **kwargs):
        time.sleep(1.5)
        return predict(*args, **kwargs)

    monkeypatch.setattr(compare, "predict_native_ab", slow_predict)
    demo, _ = server
    url = demo.local_url
    photos = []
    for seed in range(5):  # distinct photos: identical results would share one cache file, rewritten while served
        photos.append(tmp_path / f"p{seed}.png")
        random_image(300, 400, seed=seed).save(photos[-1])
    a = Client(url, verbose=False, headers={"X-Forwarded-For": "198.51.100.1"})
    b = Client(url, verbose=False, headers={"X-Forwarded-For": "198.51.100.2"})
    finished, lock = [], threading.Lock()

    def done(tag):
        def callback(job):
            if job.done():
                with lock:
                    finished.append(tag)
        return callback

    jobs = []
    for i in range(4):
        jobs.append(a.submit(handle_file(str(photos[i])), "cnn", api_name="/colorize"))
        jobs[-1].add_done_callback(lambda job, i=i: done(f"A{i}")(job))
    time.sleep(0.5)  # A's four are queued first (the first runs until 1.5 s, the others wait)
    jobs.append(b.submit(handle_file(str(photos[4])), "cnn", api_name="/colorize"))
    jobs[-1].add_done_callback(lambda job: done("B")(job))
    for job in jobs:
        job.result(timeout=300)
    time.sleep(0.2)
    assert sorted(finished) == ["A0", "A1", "A2", "A3", "B"]
    assert finished.index("B") <= 2, finished  # after at most A's first two (one running, one in its turn)


def _handler(demo: gr.Blocks, name: str):
    (fn,) = [f for f in demo.fns.values() if f.name == name or f.api_name == name]
    return fn.fn


def test_the_side_limit_holds_on_the_colorize_endpoint_too(app_env, random_weights_root, tmp_path):
    available, unavailable = colorizers.load_colorizers(["cnn"], source=random_weights_root)
    demo = app.build_demo(available, unavailable, app.Settings(max_side=100, weights=random_weights_root))
    (tmp_path / "wide.png").write_bytes(grey_png(101, 20))
    with pytest.raises(gr.Error, match="its width is over the limit of 100 pixels per side"):
        _handler(demo, "colorize")({"path": str(tmp_path / "wide.png")}, "cnn", _request("10.0.0.1"))
    (tmp_path / "ok.png").write_bytes(grey_png(100, 20))
    assert Image.open(_handler(demo, "colorize")({"path": str(tmp_path / "ok.png")}, "cnn",
                                                 _request("10.0.0.1"))).size == (100, 20)


@pytest.mark.parametrize("handler, value", [("sort_table", None), ("sort_table", "lpips_of_nothing"),
                                            ("show_in_slider", None), ("show_in_slider", "no-such-model")])
def test_unknown_choices_get_a_sentence_not_a_bare_error(app_env, random_weights_root, handler, value):
    available, unavailable = colorizers.load_colorizers(["cnn"], source=random_weights_root)
    demo = app.build_demo(available, unavailable, app.Settings(weights=random_weights_root))
    from colorizers import reference
    score = reference.Score(*(["cnn"] + [1.0] * (len(reference.Score.__dataclass_fields__) - 1)))
    files = app.ComparisonFiles("grey.png", {"cnn": "cnn.png"}, "all.zip", "original.png", {"cnn": score})
    with pytest.raises(gr.Error) as err:
        _handler(demo, handler)(value, files)
    assert ("cannot be sorted by" in err.value.message or "no result of" in err.value.message), err.value.message
    assert str(value)[:10] in err.value.message


def test_a_path_on_the_server_gets_a_sentence_not_a_bare_error(server, tmp_path):
    # A client naming a file instead of uploading it (gradio_client would upload a local file, so the request is
    # made by hand): Gradio refuses the path before any handler runs.
    import httpx
    demo, _ = server
    secret = tmp_path / "not-uploaded.png"
    secret.write_bytes(grey_png(64, 48))
    for path in (str(secret), "/etc/hostname"):
        file = {"path": path, "meta": {"_type": "gradio.FileData"}}
        with httpx.Client(base_url=demo.local_url.rstrip("/") + "/gradio_api", timeout=30) as http:
            event = http.post("/call/colorize", json={"data": [file, "cnn"]}).json()["event_id"]
            stream = http.get(f"/call/colorize/{event}").text
        assert "event: error" in stream, stream
        assert "must be uploaded with the request" in stream, stream
        assert str(tmp_path) not in stream and "/etc" not in stream


def test_a_ycbcr_tiff_is_read_not_called_damaged(tmp_path):
    # TIFF 6.0 section 21: YCbCr, uncompressed. Pillow's raw decoder stops on it with "truncated".
    original = random_image(48, 64)
    original.convert("YCbCr").save(tmp_path / "scan.tif", "TIFF")
    image = app.read_image(tmp_path / "scan.tif", 16_000_000)
    assert image.mode == "RGB" and image.size == (64, 48)
    import numpy as np
    assert np.abs(np.asarray(image, dtype=np.int16) - np.asarray(original, dtype=np.int16)).mean() < 2
    original.convert("YCbCr").save(tmp_path / "scan-lzw.tif", "TIFF", compression="tiff_lzw")  # libtiff's own path
    assert app.read_image(tmp_path / "scan-lzw.tif", 16_000_000).size == (64, 48)
