"""`python -m jcompose.demo` in a real browser: headless Chromium from the system (`apt-get install chromium`,
done by .ci/run) driven by playwright, against one demo server serving a tiny run of each method (written
without training: tests/demo_runs.py). For each method the page composes an image, which must equal what
the command shown under it (`python -m jcompose.compose ...`, run here in-process) writes; a second request
with the same settings must compile nothing; a bad upload shows its error in the page and the next request
still composes."""

import shlex
import shutil
import socket
from pathlib import Path

import cv2
import demo_runs
import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TIMEOUT_MS = 300_000  # the first request of a tab loads the model and compiles (tens of seconds on 2 cores)

pytest.importorskip("gradio", reason="the demo needs the demo extra: pip install -e '.[demo]'")
pytest.importorskip("playwright", reason="browser tests need playwright: pip install -e '.[test]'")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_inputs")
    fg, fg_mask = demo_runs.photo((32, 32), 0), np.zeros((32, 32), np.uint8)
    fg_mask[8:24, 10:26] = 255
    ref, ref_mask = demo_runs.photo((40, 40), 2), np.zeros((40, 40), np.uint8)
    ref_mask[5:35, 8:32] = 255
    target, target2 = np.zeros((48, 64), np.uint8), np.zeros((48, 64), np.uint8)
    target[10:30, 20:44] = 255
    target2[32:46, 2:18] = 255  # apart from `target`: AnyDoor composes the two objects in one batched call
    files = {"foreground": np.dstack([fg, fg_mask]), "background": demo_runs.photo((48, 64), 1),
             "reference": np.dstack([ref, ref_mask]), "target": target, "target2": target2,
             "empty_mask": np.zeros_like(target)}
    paths = {name: root / f"{name}.png" for name in files}
    for name, image in files.items():
        assert cv2.imwrite(str(paths[name]), image)
    (root / "notes.png").write_text("not an image")
    paths["not_an_image"] = root / "notes.png"
    return paths


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from jcompose.demo import app

    root = tmp_path_factory.mktemp("demo_runs")
    runs = [demo_runs.write_run(root / "anyscene", "configs/anyscene.py:tiny", seed=1),
            demo_runs.write_run(root / "dreamcom", "configs/dreamcom.py:tiny", seed=2,
                                objects=("murecom:Toy/fg1", "murecom:Cup/fg1")),
            demo_runs.write_run(root / "anydoor", "configs/anydoor.py:tiny", seed=3)]
    # without the per-step callback the tabs compile compose's very programs, so the in-process CLI runs
    # below reuse them from the compilation cache (test_step_progress_... checks the callback's path)
    demo = app.build([str(r) for r in runs], root / "requests", step_progress=False)
    port = _free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                        allowed_paths=[str(demo.requests_root)])
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def page(server):
    if not Path(CHROMIUM).exists():
        pytest.skip("the browser tests need Chromium from the system: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 1400})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(server)
        page.wait_for_selector("#anyscene-run")
        yield page
        browser.close()


# ------------------------------------------------------------------------------------ helpers


def _open_tab(page, method):
    page.get_by_role("tab", name=f"{method}:").click()
    page.wait_for_selector(f"#{method.lower()}-run", state="visible")


def _upload(page, elem_id, path):
    page.locator(f"#{elem_id} input[type=file]").set_input_files(str(path))
    page.wait_for_function("([sel, stem]) => document.querySelector(sel).innerText.includes(stem)",
                           arg=[f"#{elem_id}", Path(path).stem])


def _fill(page, elem_id, value):
    page.locator(f"#{elem_id} textarea, #{elem_id} input").first.fill(str(value))


def _compose(page, prefix):
    """Clicks Compose and waits for this request's status line; returns (status, command)."""
    status = page.locator(f"#{prefix}-status textarea")
    previous = status.input_value()
    page.click(f"#{prefix}-run")
    page.wait_for_function(
        "([sel, prev]) => { const t = document.querySelector(sel); return t && t.value && t.value !== prev; }",
        arg=[f"#{prefix}-status textarea", previous], timeout=TIMEOUT_MS)
    return status.input_value(), page.locator(f"#{prefix}-command textarea").input_value()


def _shown_images(page, prefix, count, gallery="gallery"):
    """The images of gallery `<prefix>-<gallery>` as the browser received them (fetched from the gallery's own
    URLs), RGB uint8."""
    page.wait_for_function("([sel, n]) => document.querySelectorAll(sel).length >= n",
                           arg=[f"#{prefix}-{gallery} img", count])
    images = []
    for src in page.locator(f"#{prefix}-{gallery} img").evaluate_all("els => els.map(e => e.src)")[:count]:
        data = np.frombuffer(page.request.get(src).body(), np.uint8)
        images.append(cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
    return images


def _draw_stroke(page, canvas_id, box_selector):
    """Drags the brush across the canvas's centre until the box field fills (the canvas draws the uploaded
    background a moment after the upload; a stroke before that is not kept)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.wait_for_selector(f"#{canvas_id} button[title=Brush]")
    for _ in range(5):
        page.click(f"#{canvas_id} button[title=Brush]")
        canvas = page.locator(f"#{canvas_id} canvas").first.bounding_box()
        cx, cy = canvas["x"] + canvas["width"] / 2, canvas["y"] + canvas["height"] / 2
        page.mouse.move(cx - 10, cy - 5)
        page.mouse.down()
        page.mouse.move(cx + 10, cy + 5, steps=6)
        page.mouse.up()
        try:
            page.wait_for_function(f"document.querySelector('{box_selector}').value.split(',').length === 4",
                                   timeout=10_000)
            return
        except PlaywrightTimeout:  # draw again
            pass
    raise AssertionError("the drawn stroke never filled the box field")


def _cli(command_line, out):
    """Runs one command the page shows (compose's own main, in-process) with --out replaced; returns its argv."""
    from jcompose import compose

    argv = shlex.split(command_line)[3:]
    assert shlex.split(command_line)[:3] == ["python", "-m", "jcompose.compose"]
    argv[argv.index("--out") + 1] = str(out)
    compose.main(argv)
    return argv


def _read_rgb(path):
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _traced(status):
    return int(status.rsplit(":", 1)[1])


# -------------------------------------------------------------------------------------- tests


def test_anyscene_tab_equals_the_cli_and_reuses_its_compiled_sampler(page, inputs, tmp_path):
    _open_tab(page, "AnyScene")
    _upload(page, "anyscene-foreground", inputs["foreground"])  # RGBA: the alpha is the mask
    _fill(page, "anyscene-prompt", "a photo of a dog")
    _fill(page, "anyscene-words", "dog")
    _fill(page, "anyscene-steps", 2)
    _fill(page, "anyscene-seed", 3)
    page.locator("#anyscene-attention-on input").check()
    status, command = _compose(page, "anyscene")
    assert "--seed 3" in command and "--words=dog" in command and "--show-attention" in command, command
    shown = _shown_images(page, "anyscene", 1)[0]
    maps = _shown_images(page, "anyscene", 1, gallery="attention")[0]
    argv = _cli(command, tmp_path / "cli.png")
    assert argv[argv.index("--foreground") + 1].endswith("foreground.png")
    np.testing.assert_array_equal(shown, _read_rgb(tmp_path / "cli.png"))
    np.testing.assert_array_equal(maps, _read_rgb(tmp_path / "cli_attention.png"))  # the result, then dog's map
    assert maps.shape == (shown.shape[0], 2 * shown.shape[1], 3)
    status, _ = _compose(page, "anyscene")  # the same request: every program is in the jit caches
    assert _traced(status) == 0, status
    np.testing.assert_array_equal(_shown_images(page, "anyscene", 1)[0], shown)


def test_a_bad_upload_shows_its_error_and_the_next_request_composes(page, inputs):
    page.reload()  # empty upload fields
    page.wait_for_selector("#anyscene-run")
    _upload(page, "anyscene-foreground", inputs["not_an_image"])
    _fill(page, "anyscene-prompt", "a photo of a dog")
    status, command = _compose(page, "anyscene")
    assert status.startswith("error: --foreground ") and status.endswith("notes.png: not a readable image (PNG/JPEG/...)")
    assert command == ""
    page.reload()  # the server still serves the page, and composes
    page.wait_for_selector("#anyscene-run")
    _upload(page, "anyscene-foreground", inputs["foreground"])
    _fill(page, "anyscene-prompt", "a photo of a dog")
    _fill(page, "anyscene-steps", 2)
    _fill(page, "anyscene-seed", 4)
    status, command = _compose(page, "anyscene")
    assert "--seed 4" in command and status.startswith("wrote 1 image")


def test_dreamcom_tab_draws_the_box_picks_the_object_and_equals_the_cli(page, inputs, tmp_path):
    _open_tab(page, "DreamCom")
    page.locator("#dreamcom-object input").click()
    page.get_by_role("option", name="Cup_fg1").click()
    _upload(page, "dreamcom-background", inputs["background"])
    _fill(page, "dreamcom-box", "10,10,64,20")  # x2 = 64 is outside the 64-wide background
    status, command = _compose(page, "dreamcom")
    assert status.startswith("error: --box 10,10,64,20: outside the 64x48 background") and command == "", status
    _fill(page, "dreamcom-box", "")
    _draw_stroke(page, "dreamcom-canvas", "#dreamcom-box textarea")
    x1, y1, x2, y2 = (int(v) for v in page.locator("#dreamcom-box textarea").input_value().split(","))
    assert 0 <= x1 < x2 < 64 and 0 <= y1 < y2 < 48 and x1 <= 32 <= x2 and y1 <= 24 <= y2  # around the centre
    _fill(page, "dreamcom-steps", 2)
    _fill(page, "dreamcom-seed", 5)
    _fill(page, "dreamcom-samples", 2)
    _, command = _compose(page, "dreamcom")
    assert "--object Cup_fg1" in command and "--num 2" in command and f"--box {x1},{y1},{x2},{y2}" in command
    shown = _shown_images(page, "dreamcom", 2)
    _cli(command, tmp_path / "cli")
    for i, image in enumerate(shown):
        np.testing.assert_array_equal(image, _read_rgb(tmp_path / "cli" / f"{i}.png"), err_msg=f"image {i}")
    assert not np.array_equal(shown[0], shown[1])  # each image its own noise


def test_anydoor_tab_composes_two_objects_and_equals_the_cli(page, inputs, tmp_path):
    _open_tab(page, "AnyDoor")
    _upload(page, "anydoor-reference", inputs["reference"])  # RGBA: the alpha is the object mask
    _upload(page, "anydoor-background", inputs["background"])
    _upload(page, "anydoor-target", inputs["empty_mask"])
    _fill(page, "anydoor-steps", 2)
    _fill(page, "anydoor-seed", 6)
    status, _ = _compose(page, "anydoor")
    assert status.startswith("error: target mask ") and "empty_mask.png: empty (no pixel > 127)" in status, status
    page.locator("#anydoor-target button[aria-label='Clear']").first.click()
    _upload(page, "anydoor-target", inputs["target"])
    _upload(page, "anydoor-reference2", inputs["foreground"])  # the second object (RGBA) and where it goes
    _upload(page, "anydoor-target2", inputs["target2"])
    _, command = _compose(page, "anydoor")
    argv = shlex.split(command)
    assert "--seed 6" in command and argv.count("--reference") == 2 and "--reference-mask" not in argv, command
    assert [Path(argv[i + 1]).stem for i, a in enumerate(argv) if a == "--mask"] == ["target", "target2"], command
    shown = _shown_images(page, "anydoor", 1)[0]
    _cli(command, tmp_path / "cli.png")
    np.testing.assert_array_equal(shown, _read_rgb(tmp_path / "cli.png"))
    background = cv2.cvtColor(cv2.imread(str(inputs["background"])), cv2.COLOR_BGR2RGB)
    for name in ("target", "target2"):  # each object changed its own region
        region = cv2.imread(str(inputs[name]), cv2.IMREAD_GRAYSCALE) > 127
        assert not np.array_equal(shown[region], background[region]), name


def test_a_folder_that_is_no_run_is_named(tmp_path):
    from jcompose.cli import InputError
    from jcompose.demo import sources

    with pytest.raises(InputError, match=f"{tmp_path}: neither a training run .* nor AnyDoor's release"):
        sources.find(str(tmp_path))


def test_a_release_folder_is_anydoor_and_a_damaged_one_is_named(tmp_path):
    import json

    from jcompose.cli import InputError
    from jcompose.demo import sources
    from jcompose.models import ldm_convert

    (tmp_path / "config.json").write_text(json.dumps({"_jcompose": ldm_convert.RELEASE_MARK,
                                                      "format_version": ldm_convert.RELEASE_FORMAT,
                                                      "components": {"unet": "unet"}}))
    with pytest.raises(InputError, match=r"component folder unet/ missing"):
        sources.find(str(tmp_path))
    (tmp_path / "unet").mkdir()
    assert sources.find(str(tmp_path)) == sources.Source("anydoor", "release", str(tmp_path))


def test_drawn_strokes_give_the_box_at_the_background_size():
    from jcompose.demo import common

    layer = np.zeros((24, 32, 4), np.uint8)  # the canvas at half the background's size
    layer[5:9, 10:21, 3] = 255
    mask = common.drawn_mask({"layers": [layer]}, (48, 64))
    assert common.box_text(mask) == "20,10,41,17"  # rows 10..17, columns 20..41: each canvas pixel is 2x2
    assert common.drawn_mask({"layers": [np.zeros((24, 32, 4), np.uint8)]}, (48, 64)) is None


def test_a_bad_field_is_an_input_error_not_an_exit():
    from jcompose.cli import InputError
    from jcompose.demo import common

    with pytest.raises(InputError, match=r"argument --steps: invalid int value: 'many'"):
        common.parse(["anyscene", "--checkpoint", "run", "--out", "o.png", "--steps", "many"])
    assert common.parse(["anyscene", "--checkpoint", "run", "--out", "o.png", "--prompt=--dog"]).prompt == "--dog"


@pytest.mark.parametrize("sampler", ["ddim", "dpm++2m"])
def test_step_progress_reaches_the_request_and_compose_programs_have_no_callback(sampler):
    import contextvars

    import jax

    from jcompose import diffusion
    from jcompose.demo import common
    from jcompose.models.loading import SchedulerConfig

    config = SchedulerConfig()
    schedule = diffusion.make_schedule(config)
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 4, 8, 8))

    def program():  # a fresh jit function, as each loaded model builds its own: its first trace decides
        return jax.jit(lambda x: diffusion.sample(lambda x, t: 0.1 * x, x, schedule, config, 3, method=sampler))

    compose_program = program()
    assert "callback" not in compose_program.lower(x).as_text()
    request = contextvars.ContextVar("request")  # gr.Progress finds its request the same way
    request.set("this request")
    shown = []
    denoising = common.StepProgress()
    demo_program = program()
    def progress(value, desc, unit):  # gr.Progress's call
        shown.append((value, desc, unit, request.get(None)))

    with denoising.steps(progress, "image 1"):
        # the callback may run on another thread (GPU, TPU) or this one (CPU): run the program outside the
        # request's context either way, so the progress must come from the context steps() captured
        demo = contextvars.Context().run(demo_program, x).block_until_ready()
    assert shown == [((k, 3), "image 1", "steps", "this request") for k in (1, 2, 3)]
    np.testing.assert_array_equal(demo, compose_program(x))  # the callback changes no pixel
    demo_program(x).block_until_ready()  # the program reused outside a request: nothing shown
    assert len(shown) == 3
