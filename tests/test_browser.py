"""The explorers in a real browser: headless Chromium drives JupyterLab and the lecture app as a student would.

For every course notebook ``notebooks/0[1-6]_<topic>.py`` the test starts from JupyterLab's file
browser, double-clicks the notebook (the project's ``jupyter-config/`` makes that open the notebook
view, not a text editor), waits for its kernel and runs Run > Run All Cells with ``GAE_SMOKE=1``
(small sizes). It fails on an error output, a dialog, a cell left unexecuted, an explorer the notebook
builds but does not show, or an explorer view without an image. Then it changes every slider,
dropdown and toggle of each explorer, one at a time (controls a toggle turns off are tried again
after the toggle's other options), and measures each redraw from the browser event (key press,
change, click) to the last change of the explorer's views; a slider and a dropdown of each explorer
must change what is drawn visibly (every control: at least 0.5 % of the pixels, not just a title),
and no redraw may take longer than ``$GAE_BROWSER_MAX_REDRAW_S`` (default 0.5 s; a control over it is
moved twice more and judged by the median of its three redraws, all three reported). The same is done
for each lecture notebook served by Voila as ``make lecture`` serves it, with its time to first paint.
The executed copies ``outputs/notebooks/*.ipynb`` (``$GAE_BROWSER_EXECUTED``; made with
``python -m gae_workbook.tools.run --smoke`` where missing) are opened in the same JupyterLab: no dialog
(a paired-notebook error), every ``image/png`` output shown as a loaded ``<img>``, no error output.

Select with ``pytest -m browser``. Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get
install chromium chromium-driver``), selenium and voila (both in the ``dev`` extra). The
servers listen on 127.0.0.1 with a random token, serve a copy of ``notebooks/`` (the repository is
never written) and are stopped at the end with their kernels, also on failure. The timings are printed
and written to ``$GAE_BROWSER_REPORT`` (default ``outputs/browser-test.json``); on failure a
screenshot is saved beside it.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
# the course notebooks, not their exercises and solutions (NN_topic_ex_KK.py, NN_topic_sol_KK.py)
NOTEBOOKS = sorted(p for p in (REPO / "notebooks").glob("0[1-6]_*.py") if not re.search(r"_(ex|sol)_\d+$", p.stem))
LECTURES = sorted((REPO / "lecture").glob("*.ipynb"))
# every course notebook, 00 included (the executed copies: what `python -m gae_workbook.tools.run` writes)
COURSE = sorted(p for p in (REPO / "notebooks").glob("[0-9][0-9]_*.py") if not re.search(r"_(ex|sol)_\d+$", p.stem))
REPORT = Path(os.environ.get("GAE_BROWSER_REPORT", REPO / "outputs" / "browser-test.json"))
RUN_ALL_TIMEOUT = float(os.environ.get("GAE_BROWSER_RUN_TIMEOUT", 300))  # seconds for one notebook's Run All
# a redraw slower than this fails: the course's aim, 0.5 s on 2 cores
MAX_REDRAW_S = float(os.environ.get("GAE_BROWSER_MAX_REDRAW_S", 0.5))
# the executed copies (`python -m gae_workbook.tools.run --smoke` writes them); missing ones are made first
EXECUTED = Path(os.environ.get("GAE_BROWSER_EXECUTED", REPO / "outputs" / "notebooks"))
VISIBLE = 0.005  # share of pixels that must change (by more than PIXEL_STEP) for a change to count as visible
PIXEL_STEP = 12  # out of 255: a difference smaller than this is antialiasing, not a new picture
QUIET_S = 1.0  # a redraw is over when the explorer's outputs received nothing new for this long
REDRAW_TIMEOUT_S = 30.0

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

# ------------------------------------------------------------------------------------------ page scripts
# The explorers of a page: top-level widget views (not those nested in an Output widget) that hold an
# Output widget or a control; progress bars (tqdm) are neither.
FIND_EXPLORERS = """
const roots = [...document.querySelectorAll('.jp-OutputArea-output[data-mime-type="MIME"]')]
  .filter(e => !e.parentElement.closest('.widget-output'));
const candidates = roots.length ? roots : [...document.querySelectorAll('.jupyter-widgets')]
  .filter(e => !e.parentElement.closest('.jupyter-widgets'));
return candidates.filter(e => e.querySelector('.widget-output, .widget-image, .widget-slider, .widget-dropdown'));
""".replace("MIME", WIDGET_VIEW)

# The views of an explorer: ipywidgets Image widgets (an <img> whose src is a blob) and Output widgets.
VIEWS = "img.widget-image, .widget-output"

# What one explorer shows now: per view, its images as PNG data URLs (read back through a canvas, since a
# blob URL names a picture but is not one) and the errors it shows.
SNAPSHOT = """
const png = i => {
  if (!i.complete || !i.naturalWidth) return i.src ? 'pending:' + i.src : '';
  const c = document.createElement('canvas');
  c.width = i.naturalWidth; c.height = i.naturalHeight;
  c.getContext('2d').drawImage(i, 0, 0);
  return c.toDataURL('image/png');
};
const shown = v => v.getClientRects().length > 0;  // a view the explorer hides is not an empty view
return [...arguments[0].querySelectorAll('VIEWS')].filter(shown).map(v => {
  const images = v.tagName === 'IMG' ? [v] : [...v.querySelectorAll('img')];
  return {
    images: images.map(png).filter(x => x),
    error: [...v.querySelectorAll('[data-mime-type="application/vnd.jupyter.error"]')].map(e => e.textContent),
    text: v.tagName === 'IMG' ? '(empty image widget)' : v.textContent.slice(0, 200),
  };
});
""".replace("VIEWS", VIEWS)

# Listen to the explorer: the time of the first input event, and of the last change of a view (new src,
# new output) or image load inside it.
WATCH = """
const root = arguments[0];
const isView = n => { const e = n && (n.nodeType === 1 ? n : n.parentElement); return !!(e && e.closest('VIEWS')); };
// a change of a view counts once the input event happened (not a late image of the previous change)
const seen = () => { if (window.__gae.event !== null) window.__gae.last = performance.now(); };
if (window.__gaeObserver) window.__gaeObserver.disconnect();
window.__gae = {event: null, last: null};
if (!root.__gaeListening) {
  const mark = e => { if (window.__gae.event === null) window.__gae.event = e.timeStamp; };
  for (const type of ['keydown', 'change', 'click']) root.addEventListener(type, mark, true);
  root.addEventListener('load', e => { if (isView(e.target)) seen(); }, true);
  root.__gaeListening = true;
}
window.__gaeObserver = new MutationObserver(records => {
  if (records.some(r => isView(r.target))) seen();
});
window.__gaeObserver.observe(root, {subtree: true, childList: true, attributes: true, characterData: true});
""".replace("VIEWS", VIEWS)

# The controls of an explorer, with what the test can do to each.
CONTROLS = """
const root = arguments[0];
const label = w => (w.querySelector('.widget-label')?.textContent || '').trim();
const out = [];
root.querySelectorAll('.widget-slider').forEach((w, i) => {
  const h = w.querySelector('.noUi-handle');
  if (!h) return;
  out.push({kind: 'slider', index: i, label: label(w), now: h.getAttribute('aria-valuenow'),
            disabled: !!w.querySelector('[disabled]'),
            min: h.getAttribute('aria-valuemin'), max: h.getAttribute('aria-valuemax')});
});
root.querySelectorAll('.widget-dropdown').forEach((w, i) => {
  const s = w.querySelector('select');
  if (s) out.push({kind: 'dropdown', index: i, label: label(w), selected: s.selectedIndex, disabled: s.disabled,
                  enabled: [...s.options].flatMap((o, k) => o.disabled ? [] : [k])});
});
root.querySelectorAll('.widget-toggle-buttons').forEach((w, i) => {
  const b = [...w.querySelectorAll('button')];
  out.push({kind: 'toggle', index: i, label: label(w), n: b.length, disabled: b.every(x => x.disabled),
            selected: b.findIndex(x => x.classList.contains('mod-active'))});
});
return out;
"""


# ------------------------------------------------------------------------------------------- helpers
def _browser_binaries() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("needs Debian's chromium and chromium-driver: `apt-get install chromium chromium-driver`")
    pytest.importorskip("selenium", reason="needs selenium: `pip install -e '.[browser]'`")
    return chromium, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"no answer from {url} after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen) -> None:
    """Stop a server this test started, and its kernels (each runs in a session of its own)."""
    kernels = [pid for pid in _process_tree(process.pid) if pid != process.pid]
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)  # the server shuts its kernels down
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    for pid in kernels:  # any kernel the server did not shut down
        with contextlib.suppress(OSError):
            if b"ipykernel" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)


def _server_env(tmp: Path) -> dict[str, str]:
    """The servers' (and so the kernels') environment: smoke sizes, figures and Jupyter state in ``tmp``."""
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # the kernel picks the inline backend, as for a student
    env.update(
        GAE_SMOKE="1",
        GAE_FIGURES_DIR=str(tmp / "figures"),
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
        # the project's JupyterLab defaults (`make lab` uses the same folder)
        JUPYTER_CONFIG_PATH=os.pathsep.join(
            p for p in (str(REPO / "jupyter-config"), env.get("JUPYTER_CONFIG_PATH")) if p
        ),
        JUPYTERLAB_SETTINGS_DIR=str(tmp / "user-settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"),
        JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
    )
    return env


def _user_settings(directory: Path) -> None:
    """A clean user profile: no news prompt, no autosave, every cell in the DOM (no windowing)."""
    settings = {
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
            "fetchNews": "false",
            "checkForUpdates": False,
        },
        "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    }
    for name, value in settings.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


def _process_tree(root: int) -> dict[int, list[str]]:
    """``/proc/PID/stat`` fields (after the command name) of ``root`` and its descendants (a server's kernels)."""
    stats = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            stats[int(stat.parent.name)] = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, ValueError):
            continue
    tree, grew = {root}, True
    while grew:  # field 4 of /proc/PID/stat is the parent's id
        children = {pid for pid, fields in stats.items() if int(fields[1]) in tree} - tree
        tree |= children
        grew = bool(children)
    return {pid: stats[pid] for pid in tree if pid in stats}


def _tree_cpu(root: int) -> float:
    """CPU seconds used so far by a server and its kernels."""
    ticks = sum(int(f[11]) + int(f[12]) for f in _process_tree(root).values())  # utime + stime
    return ticks / os.sysconf("SC_CLK_TCK")


def _wait_quiet(root: int, processes: int, timeout: float = 300.0, quiet: float = 3.0) -> float:
    """Wait until a server runs ``processes`` processes and they stop using CPU (pre-heated kernels done).

    Returns:
        The seconds waited.
    """
    started = time.monotonic()
    last, last_change = _tree_cpu(root), time.monotonic()
    while time.monotonic() - started < timeout:
        time.sleep(0.5)
        now, count = _tree_cpu(root), len(_process_tree(root))
        if now - last > 0.05 or count < processes:
            last, last_change = now, time.monotonic()
        elif time.monotonic() - last_change > quiet:
            break
    return time.monotonic() - started


def _start(command: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    with open(log, "w") as stream:
        return subprocess.Popen(
            command, cwd=cwd, env=env, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True
        )


def _changed_share(before: str, after: str) -> float:
    """Share of pixels that differ by more than PIXEL_STEP between two ``data:image/png`` sources."""
    import numpy as np
    from PIL import Image

    def pixels(src: str):
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"), dtype=int)

    a, b = pixels(before), pixels(after)
    if a.shape != b.shape:
        return 1.0
    return float((np.abs(a - b).max(axis=-1) > PIXEL_STEP).mean())


def _visible_change(before: list[dict], after: list[dict]) -> float:
    """The largest share of changed pixels over the explorer's images (1.0 where an image appeared)."""
    shares = [0.0]
    for out_before, out_after in zip(before, after):
        for k, src in enumerate(out_after["images"]):
            old = out_before["images"][k] if k < len(out_before["images"]) else None
            if old is None:
                shares.append(1.0)
            elif old != src:
                shares.append(_changed_share(old, src) if src.startswith("data:image/png") else 1.0)
    return max(shares)


def _check_drawn(snapshot: list[dict], where: str) -> None:
    errors = [e for out in snapshot for e in out["error"]]
    assert not errors, f"{where}: an explorer output shows an error: {errors[0][:500]}"
    empty = [out["text"] for out in snapshot if not out["images"]]
    assert not empty, f"{where}: an explorer output drew no image (it shows {empty[0]!r})"


def _check_no_dialog(driver, where: str) -> None:
    from selenium.webdriver.common.by import By

    dialogs = driver.find_elements(By.CSS_SELECTOR, ".jp-Dialog")
    assert not dialogs, f"{where}: a dialog is open: {dialogs[0].text[:500]!r}"


# --------------------------------------------------------------------------------------- exercising
def _act(driver, root, control: dict) -> None:
    """Change one control the way a student does: arrow key on a slider, pick in a menu, click a toggle."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    if control["kind"] == "slider":
        handle = root.find_elements(By.CSS_SELECTOR, ".widget-slider")[control["index"]].find_element(
            By.CSS_SELECTOR, ".noUi-handle"
        )
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].focus();", handle)
        at_max = float(control["now"]) >= float(control["max"])
        handle.send_keys(Keys.ARROW_LEFT if at_max else Keys.ARROW_RIGHT)
    elif control["kind"] == "dropdown":
        select = root.find_elements(By.CSS_SELECTOR, ".widget-dropdown")[control["index"]].find_element(
            By.TAG_NAME, "select"
        )
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", select)
        choice = next(k for k in control["enabled"] if k != control["selected"])
        Select(select).select_by_index(choice)
    else:
        buttons = root.find_elements(By.CSS_SELECTOR, ".widget-toggle-buttons")[control["index"]].find_elements(
            By.TAG_NAME, "button"
        )
        choice = control.get("choice", 1 if control["selected"] != 1 else 0)
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", buttons[choice])
        buttons[choice].click()


def _redraw(driver, root, control: dict) -> dict:
    """Change ``control``, wait for the explorer to redraw; the redraw time and the visible change."""
    before = driver.execute_script(SNAPSHOT, root)
    driver.execute_script(WATCH, root)
    _act(driver, root, control)
    deadline = time.monotonic() + REDRAW_TIMEOUT_S
    while time.monotonic() < deadline:
        state = driver.execute_script("return [window.__gae, performance.now()];")
        marks, now = state
        if marks["last"] is not None and now - marks["last"] > QUIET_S * 1000:
            break
        time.sleep(0.05)
    marks = driver.execute_script("return window.__gae;")
    after = driver.execute_script(SNAPSHOT, root)
    redraw = None
    if marks["last"] is not None and marks["event"] is not None:
        redraw = max(0.0, (marks["last"] - marks["event"]) / 1000)
    return {
        "kind": control["kind"],
        "label": control["label"],
        "redraw_s": None if redraw is None else round(redraw, 3),
        "changed": round(_visible_change(before, after), 4),
        "after": after,
    }


_MOVABLE = {
    "slider": lambda c: c["min"] != c["max"],
    "dropdown": lambda c: any(k != c["selected"] for k in c["enabled"]),
    "toggle": lambda c: c["n"] >= 2,
}


def _change(driver, root, name: str, kind: str, index: int, choice: int | None = None) -> dict:
    """Change one control (state read now: an earlier change may have moved or disabled it) and measure."""
    control = next(c for c in driver.execute_script(CONTROLS, root) if c["kind"] == kind and c["index"] == index)
    if control["disabled"] or not _MOVABLE[kind](control):
        return {"kind": kind, "label": control["label"], "skipped": "disabled or a single choice"}
    if choice is not None:
        control["choice"] = choice
    row = _redraw(driver, root, control)
    _check_drawn(row.pop("after"), f"{name}, after changing {kind} {control['label']!r}")
    _check_no_dialog(driver, name)
    if (row["redraw_s"] or 0) > MAX_REDRAW_S:  # one slow redraw may be the machine: judge the median of three
        samples = [row["redraw_s"]]
        for _ in range(2):
            again = next(c for c in driver.execute_script(CONTROLS, root) if c["kind"] == kind and c["index"] == index)
            redo = _redraw(driver, root, again)
            _check_drawn(redo.pop("after"), f"{name}, after changing {kind} {control['label']!r} again")
            samples.append(redo["redraw_s"] or 0.0)
        row["redraw_samples_s"] = samples
        row["redraw_s"] = sorted(samples)[1]
    return row


def _exercise(driver, where: str, expected: bool = True) -> list[dict]:
    """Every control of every explorer on the page, one change each; checks and returns the measurements.

    Controls that the current state turns off (a head slider while the view shows a sum over heads) are
    tried again after each other option of every toggle, so each control is moved where it matters.
    """
    explorers = driver.execute_script(FIND_EXPLORERS)
    assert explorers or not expected, (
        f"{where}: the notebook builds an explorer but none is on the page (is it shown in smoke mode too?)"
    )
    results = []
    for e, root in enumerate(explorers):
        name = f"{where} explorer {e}"
        _check_drawn(driver.execute_script(SNAPSHOT, root), name)
        controls = [(c["kind"], c["index"], c["n"] if c["kind"] == "toggle" else 0)
                    for c in driver.execute_script(CONTROLS, root)]  # fmt: skip
        rows = [_change(driver, root, name, kind, index) for kind, index, _ in controls]

        def retry_skipped() -> None:
            for k, (other, other_index, _) in enumerate(controls):
                if "skipped" in rows[k]:
                    rows[k] = _change(driver, root, name, other, other_index)

        retry_skipped()  # the last toggle of the first pass may have turned them on
        for kind, index, n in [c for c in controls if c[0] == "toggle"]:
            for choice in range(2, n):  # options 0 and 1 were visited in the first pass
                if not any("skipped" in r for r in rows):
                    break
                rows.append(_change(driver, root, name, kind, index, choice))
                retry_skipped()
        for kind in ("slider", "dropdown"):
            moved = [r for r in rows if r["kind"] == kind and "skipped" not in r]
            assert moved, f"{name}: no {kind} to move"
            assert max(r["changed"] for r in moved) >= VISIBLE, (
                f"{name}: no {kind} changed the drawing visibly (at most {max(r['changed'] for r in moved):.2%} "
                f"of pixels): {moved}"
            )
        slow = [r for r in rows if (r.get("redraw_s") or 0) > MAX_REDRAW_S]
        assert not slow, f"{name}: redraws slower than {MAX_REDRAW_S} s: {slow}"
        # every control a student moves must change the picture visibly, not only a title
        faint = [r for r in rows if "skipped" not in r and r["changed"] < VISIBLE]
        assert not faint, f"{name}: controls that changed under {VISIBLE:.1%} of the pixels: {faint}"
        results.append({"explorer": e, "controls": rows})
    return results


def _report(key: str, value) -> None:
    data = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    data[key] = value
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(data, indent=1))
    print(f"\n{key}: {json.dumps(value)}")


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    chromium, chromedriver = _browser_binaries()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1600,1200",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(flag)
    options.set_capability("unhandledPromptBehavior", "accept")  # "leave the page?" when moving to the next one
    browser = webdriver.Chrome(service=Service(chromedriver), options=options)
    browser.set_script_timeout(30)
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory):
    """JupyterLab on 127.0.0.1 with a token, serving a copy of ``notebooks/`` (the runs never touch the repo)."""
    _browser_binaries()
    tmp = tmp_path_factory.mktemp("jupyterlab")
    root = tmp / "notebooks"
    shutil.copytree(REPO / "notebooks", root, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "*.ipynb"))
    _user_settings(tmp / "user-settings")
    port, token = _free_port(), secrets.token_hex(16)
    command = [
        sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}", "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]  # fmt: skip
    if os.geteuid() == 0:
        command.append("--allow-root")  # CI runs as root
    log = tmp / "jupyterlab.log"
    process = _start(command, _server_env(tmp), root, log)
    try:
        _wait_http(f"http://127.0.0.1:{port}/api/status?token={token}", process, log)
        yield f"http://127.0.0.1:{port}", token, root
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def lecture_app(tmp_path_factory):
    """The lecture app (Voila) on 127.0.0.1 with a token, as ``make lecture`` starts it."""
    _browser_binaries()
    pytest.importorskip("voila", reason="the lecture app needs voila: `pip install -e '.[lecture]'`")
    tmp = tmp_path_factory.mktemp("voila")
    port, token = _free_port(), secrets.token_hex(16)
    # the flags of `make lecture`: every lecture notebook runs once in a kernel kept ready (--preheat_kernel),
    # so a page opens on a finished explorer; a used kernel is replaced only after fill_delay
    command = [
        sys.executable, "-m", "voila", str(REPO / "lecture"), "--no-browser", "--Voila.ip=127.0.0.1",
        f"--port={port}", "--Voila.port_retries=0", f"--token={token}", "--show_tracebacks=True",
        "--preheat_kernel=True", "--VoilaKernelManager.fill_delay=600",
    ]  # fmt: skip
    log = tmp / "voila.log"
    process = _start(command, _server_env(tmp), REPO / "lecture", log)
    try:
        _wait_http(f"http://127.0.0.1:{port}/?token={token}", process, log)
        heated = _wait_quiet(process.pid, processes=1 + len(LECTURES))  # the server and one kernel each
        print(f"\nlecture app: kernels pre-heated {heated:.0f} s after the server answered")
        yield f"http://127.0.0.1:{port}", token
    finally:
        _stop(process)


# ------------------------------------------------------------------------------------------------ tests
@contextlib.contextmanager
def _screenshot_on_failure(driver, name: str):
    """On failure, keep what the browser showed beside the report (``browser-failure-<name>.png``)."""
    try:
        yield
    except BaseException:
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(REPORT.parent / f"browser-failure-{name}.png"))
        raise


def _open_by_double_click(driver, base: str, token: str, name: str) -> None:
    """The file browser of a fresh workspace, then a double-click on ``name``, as the README says."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{base}/lab?reset&token={token}")
    wait = WebDriverWait(driver, 90)
    item = wait.until(
        EC.element_to_be_clickable(
            (By.XPATH, f"//li[contains(@class, 'jp-DirListing-item')][.//span[text()='{name}']]")
        )
    )
    ActionChains(driver).double_click(item).perform()
    panel = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".jp-MainAreaWidget:not(.lm-mod-hidden)")))
    wait.until(lambda d: panel.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell, .jp-FileEditor"))
    assert panel.find_elements(By.CSS_SELECTOR, ".jp-Notebook"), (
        f"double-clicking {name} opened {panel.get_attribute('class')}, not the notebook view: the project's "
        "JupyterLab settings (jupyter-config/labconfig/default_setting_overrides.json) are not in effect"
    )


def _run_all(driver, name: str) -> float:
    """Run > Run All Cells; wait until every code cell ran. Returns the seconds it took."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 30)
    # the notebook's kernel is up (status bar "Python 3 (ipykernel) | Idle") before anything runs: a Run All
    # sent earlier makes JupyterLab ask which kernel to start
    WebDriverWait(driver, 120).until(lambda d: "| Idle" in " ".join(d.execute_script(STATUS_BAR).split()))
    menu = wait.until(EC.element_to_be_clickable((By.XPATH, "//li[contains(@class,'lm-MenuBar-item')][.='Run']")))
    menu.click()
    wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "li.lm-Menu-item[data-command='runmenu:run-all']"))).click()
    started = time.monotonic()
    prompts = "return [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputArea-prompt')]" \
        ".map(p => p.textContent.trim());"  # fmt: skip
    quiet_since = None
    while time.monotonic() - started < RUN_ALL_TIMEOUT:
        _check_no_dialog(driver, name)
        shown = driver.execute_script(prompts)
        busy = any("*" in p for p in shown)
        if not busy and time.monotonic() - started > 2:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 2:  # nothing queued for 2 s: Run All is over
                break
        else:
            quiet_since = None
        time.sleep(0.5)
    else:
        pytest.fail(f"{name}: Run All did not finish in {RUN_ALL_TIMEOUT:.0f} s")
    elapsed = time.monotonic() - started
    errors = driver.find_elements(
        By.CSS_SELECTOR, ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']"
    )
    assert not errors, f"{name}: a cell failed:\n{errors[0].text[-1500:]}"
    not_run = [p for p in driver.execute_script(prompts) if not any(c.isdigit() for c in p)]
    assert not not_run, f"{name}: {len(not_run)} code cells did not run"
    return elapsed


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_explorers_in_jupyterlab(driver, jupyterlab, notebook):
    base, token, _ = jupyterlab
    started = time.monotonic()
    try:
        with _screenshot_on_failure(driver, notebook.stem):
            _open_by_double_click(driver, base, token, notebook.name)
            run_s = _run_all(driver, notebook.name)
            _check_no_dialog(driver, notebook.name)
            # a notebook that builds an explorer (a call of widgets.*explorer) must show it, also in smoke mode
            builds = re.search(r"\bwidgets\.\w*explorer\(", notebook.read_text()) is not None
            explorers = _exercise(driver, notebook.name, expected=builds)
    finally:
        _shutdown_kernels(base, token)  # the next notebook gets both cores
    total_s = time.monotonic() - started
    _report(notebook.stem, {"run_all_s": round(run_s, 1), "total_s": round(total_s, 1), "explorers": explorers})


def _shutdown_kernels(base: str, token: str) -> None:
    with urllib.request.urlopen(f"{base}/api/kernels?token={token}", timeout=10) as response:
        kernels = json.load(response)
    for kernel in kernels:
        request = urllib.request.Request(f"{base}/api/kernels/{kernel['id']}?token={token}", method="DELETE")
        urllib.request.urlopen(request, timeout=30).close()


STATUS_BAR = "return document.querySelector('#jp-main-statusbar')?.innerText || '';"

# time to first paint: from the navigation to every output of the first explorer holding an image
FIRST_PAINT = """
const roots = (() => { FIND })();
if (!roots.length) return document.body.innerText.includes('Traceback') ? -1 : null;
const views = [...roots[0].querySelectorAll('VIEWS')].filter(v => v.getClientRects().length > 0);
const drawn = v => v.tagName === 'IMG' ? v.complete && v.naturalWidth > 0 : !!v.querySelector('img');
return views.length && views.every(drawn) ? performance.now() : null;
""".replace("FIND", FIND_EXPLORERS).replace("VIEWS", VIEWS)


@pytest.mark.parametrize("lecture", LECTURES, ids=[p.stem for p in LECTURES])
def test_lecture_app(driver, lecture_app, lecture):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, token = lecture_app
    with _screenshot_on_failure(driver, f"lecture-{lecture.stem}"):
        driver.get(f"{base}/voila/render/{lecture.name}?token={token}")
        first_paint = WebDriverWait(driver, 180, poll_frequency=0.1).until(lambda d: d.execute_script(FIRST_PAINT))
        assert first_paint > 0, (
            f"{lecture.name}: the app shows an error:\n{driver.find_element(By.TAG_NAME, 'body').text[-1500:]}"
        )
        explorers = _exercise(driver, f"lecture/{lecture.name}")
    _report(f"lecture/{lecture.stem}", {"first_paint_s": round(first_paint / 1000, 2), "explorers": explorers})


# ------------------------------------------------------------------------------- the executed copies
def _executed_notebooks(tmp: Path) -> list[Path]:
    """The executed copy of every course notebook: from ``EXECUTED``, made (smoke size) where missing."""
    sources = COURSE
    missing = [p for p in sources if not (EXECUTED / f"{p.stem}.ipynb").exists()]
    if missing:  # as `python -m gae_workbook.tools.run --smoke` makes them, into a folder of this test
        out = tmp / "made"
        command = [sys.executable, "-m", "gae_workbook.tools.run", "--smoke", "--out", str(out), *map(str, missing)]
        env = {**os.environ, "GAE_FIGURES_DIR": str(tmp / "figures")}
        subprocess.run(command, cwd=REPO, env=env, check=True, timeout=1800)
    return [EXECUTED / f"{p.stem}.ipynb" if p not in missing else tmp / "made" / f"{p.stem}.ipynb" for p in sources]


def _png_outputs(path: Path) -> int:
    notebook = json.loads(path.read_text())
    return sum(
        "image/png" in output.get("data", {})
        for cell in notebook["cells"]
        if cell["cell_type"] == "code"
        for output in cell.get("outputs", [])
    )


# the open notebook's rendered images: [loaded, with a natural width] per <img> of an output
SHOWN_IMAGES = """
const panel = document.querySelector('.jp-MainAreaWidget:not(.lm-mod-hidden) .jp-Notebook');
if (!panel) return null;
return [...panel.querySelectorAll('.jp-OutputArea-output img')].map(i => [i.complete, i.naturalWidth]);
"""


@pytest.fixture(scope="module")
def executed(jupyterlab, tmp_path_factory):
    """The executed copies, placed in the served folder under ``executed/``."""
    _, _, root = jupyterlab
    served = root / "executed"
    served.mkdir(exist_ok=True)
    copies = []
    for path in _executed_notebooks(tmp_path_factory.mktemp("executed")):
        shutil.copy(path, served / path.name)
        copies.append(served / path.name)
    return copies


@pytest.mark.parametrize("name", [f"{p.stem}.ipynb" for p in COURSE])
def test_executed_copy_opens_in_jupyterlab_with_its_figures(driver, jupyterlab, executed, name):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, token, _ = jupyterlab
    path = next(p for p in executed if p.name == name)
    expected = _png_outputs(path)
    started = time.monotonic()
    try:
        with _screenshot_on_failure(driver, f"executed-{path.stem}"):
            driver.get(f"{base}/lab/tree/executed/{name}?reset&token={token}")

            def settled(d):  # a dialog, or every figure of the file shown as a loaded image
                if d.find_elements(By.CSS_SELECTOR, ".jp-Dialog"):
                    return True
                shown = d.execute_script(SHOWN_IMAGES)
                return shown is not None and len(shown) >= expected and all(c and w > 0 for c, w in shown)

            with contextlib.suppress(Exception):
                WebDriverWait(driver, 90, poll_frequency=0.25).until(settled)
            _check_no_dialog(driver, f"executed/{name}")
            shown = driver.execute_script(SHOWN_IMAGES)
            assert shown is not None, f"executed/{name}: JupyterLab did not open it as a notebook"
            assert len(shown) >= expected, f"executed/{name}: {len(shown)} images shown, the file has {expected}"
            broken = [k for k, (complete, width) in enumerate(shown) if not (complete and width > 0)]
            assert not broken, f"executed/{name}: images {broken} did not load"
            errors = driver.find_elements(
                By.CSS_SELECTOR, ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']"
            )
            assert not errors, f"executed/{name}: an error output:\n{errors[0].text[-1500:]}"
    finally:
        _shutdown_kernels(base, token)
    _report(f"executed/{path.stem}", {"png_outputs": expected, "images_shown": len(shown),
                                      "open_s": round(time.monotonic() - started, 1)})  # fmt: skip
