"""Load benchmark (issue #8): N concurrent simulated clinicians against PeerBridge under gunicorn
and the dev EHR, both on loopback. Each user loops: EHR launch (launch -> authorize -> callback,
redirects followed by hand with a cookie jar), patient view, propose a referral (form + submit).
With `full=True` (benchmarks/soak.py) the loop goes on as the social worker: a launch of their
own, worklist, complete the draft (and its review step when the page has one), record an outcome.

Reports throughput, p50/p95/p99 per step and errors. Goal: 0 errors and patient view p95 <= 300 ms
on a 2-core machine with 50 users for 60 s.

Run: python benchmarks/load.py [--users 50] [--duration 60] [--workers 2] [--think 2] [--json FILE]

`Stack` and `Browser` are also what benchmarks/faults.py drives.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlencode, urljoin, urlsplit

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from config.settings import DEFAULT_DIRECTORY  # noqa: E402
from fhir_mappings.directory import load_directory_file  # noqa: E402
from smartapp.ops.demo import (  # noqa: E402
    demo_wiring,
    free_port,
    gunicorn_command,
    sandbox_command,
    wait_until_up,
)

SEED_PATIENTS = ROOT / "ehr_sandbox" / "seed" / "02-patients.json"
AGAIN = re.compile(r'href="([^"]*again=1[^"]*)"')
SYSTEM = "https://peerbridge.example.org/fhir/NamingSystem/referral-id"
USER = "Practitioner/subspecialist-1"
SOCIAL_WORKER = "Practitioner/social-worker-1"


class StepError(Exception):
    def __init__(self, step: str, detail: str) -> None:
        super().__init__(f"{step}: {detail}")
        self.step = step
        self.detail = detail


class AlreadyReferred(StepError):
    """The page said the patient already has a referral to the program and asked first."""


class Stack:
    """The dev EHR and PeerBridge (gunicorn) on loopback, wired as `peerbridge demo` wires them."""

    def __init__(
        self,
        workdir: Path,
        *,
        workers: int = 2,
        env: dict[str, str] | None = None,
        gunicorn_config: str = "",
    ):
        self.workdir = workdir
        self.workers = workers
        self.gunicorn_config = gunicorn_config  # instead of the deployed one (a probe's)
        self.extra_env = env or {}
        self.ehr_port = free_port()
        self.app_port = free_port()
        self.ehr_url = f"http://127.0.0.1:{self.ehr_port}"
        self.app_url = f"http://127.0.0.1:{self.app_port}"
        self.fhir_base = f"{self.ehr_url}/fhir"
        self.ehr: subprocess.Popen[bytes] | None = None
        self.app: subprocess.Popen[bytes] | None = None
        clients, env_ = demo_wiring("127.0.0.1", self.ehr_port, self.app_port, workdir)
        self.clients_file = workdir / "ehr-clients.json"
        self.clients_file.write_text(json.dumps(clients), encoding="utf-8")
        self.env = {
            **os.environ,
            **env_,
            "PEERBRIDGE_APP_LOG_LEVEL": "WARNING",
            "PEERBRIDGE_APP_LOG_FORMAT": "json",
            **self.extra_env,
        }

    def start(self) -> None:
        self.ehr = subprocess.Popen(
            sandbox_command(
                host="127.0.0.1",
                port=self.ehr_port,
                db=self.workdir / "ehr.sqlite3",
                clients=self.clients_file,
                reset=True,
            ),
            stdout=subprocess.DEVNULL,
            stderr=(self.workdir / "ehr.log").open("ab"),
        )
        wait_until_up(f"{self.fhir_base}/metadata", timeout=60, process=self.ehr)
        self.start_app()

    def start_app(self) -> None:
        command = gunicorn_command(f"127.0.0.1:{self.app_port}", workers=self.workers)
        if self.gunicorn_config:
            command[command.index("--config") + 1] = self.gunicorn_config
        self.app = subprocess.Popen(
            command,
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=(self.workdir / "app.log").open("ab"),
        )
        wait_until_up(f"{self.app_url}/healthz", timeout=60, process=self.app)

    def stop_app(self) -> None:
        if self.app is not None and self.app.poll() is None:
            self.app.send_signal(signal.SIGTERM)
            self.app.wait(timeout=60)

    def restart_app(self) -> None:
        self.stop_app()
        self.start_app()

    def stop(self) -> None:
        self.stop_app()
        if self.ehr is not None and self.ehr.poll() is None:
            self.ehr.terminate()
            self.ehr.wait(timeout=30)

    def admin(self, method: str, path: str, **kwargs: Any) -> Any:
        response = requests.request(method, f"{self.ehr_url}/_admin/{path}", timeout=30, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else {}

    def kill_worker(self) -> None:
        """kill -9 one gunicorn worker (the master starts another): no graceful anything."""
        if self.app is None:
            return
        children = Path(f"/proc/{self.app.pid}/task/{self.app.pid}/children")
        pids = [int(p) for p in children.read_text().split()] if children.exists() else []
        if pids:
            os.kill(pids[0], signal.SIGKILL)

    def referral_count(self, patient: str, identifier: str) -> int:
        """ServiceRequests with this identifier; -1 when their Tasks are not exactly one each."""
        requests_ = self.service_requests(patient, identifier)
        tasks = self._count(patient, "Task", identifier)
        return requests_ if tasks == requests_ else -1

    def _count(self, patient: str, rtype: str, identifier: str) -> int:
        body = {"client_id": "peerbridge", "patient": patient, "user": USER}
        token = self.admin("POST", "tokens", json={**body, "scope": f"patient/{rtype}.rs"})
        found = requests.get(
            f"{self.fhir_base}/{rtype}",
            params={"identifier": f"{SYSTEM}|{identifier}"},
            headers={"Authorization": f"Bearer {token['access_token']}"},
            timeout=30,
        )
        found.raise_for_status()
        return len(found.json().get("entry", []))

    def referrals_by_program(self, patient: str) -> Counter[str]:
        """PeerBridge's ServiceRequests of this patient in the EHR (by its identifier system),
        counted per program: one person's intent written twice shows as a count above one."""
        body = {"client_id": "peerbridge", "patient": patient, "user": USER}
        token = self.admin("POST", "tokens", json={**body, "scope": "patient/ServiceRequest.rs"})
        headers = {"Authorization": f"Bearer {token['access_token']}"}
        url: str | None = f"{self.fhir_base}/ServiceRequest?patient={patient}&_count=200"
        found: Counter[str] = Counter()
        for _page in range(200):  # bounded: 40,000 ServiceRequests
            if not url:
                break
            page = requests.get(url, headers=headers, timeout=30)
            page.raise_for_status()
            bundle = page.json()
            for entry in bundle.get("entry", []):
                sr = entry["resource"]
                if any(i.get("system") == SYSTEM for i in sr.get("identifier", [])):
                    # PeerBridge writes "Referral to peer support: <program name>".
                    text = str(sr.get("code", {}).get("text", ""))
                    found[text.split(": ", 1)[-1]] += 1
            url = next(
                (li["url"] for li in bundle.get("link", []) if li["relation"] == "next"), None
            )
        return found

    def service_requests(self, patient: str, identifier: str) -> int:
        """How many ServiceRequests in the EHR carry this referral identifier."""
        body = {"client_id": "peerbridge", "patient": patient, "user": USER}
        token = self.admin("POST", "tokens", json={**body, "scope": "patient/ServiceRequest.rs"})
        found = requests.get(
            f"{self.fhir_base}/ServiceRequest",
            params={"identifier": f"{SYSTEM}|{identifier}"},
            headers={"Authorization": f"Bearer {token['access_token']}"},
            timeout=30,
        )
        found.raise_for_status()
        return len(found.json().get("entry", []))


class Browser:
    """One clinician's browser: a cookie jar for PeerBridge; EHR hops carry no PeerBridge cookie."""

    sent: ClassVar[Counter[str]] = (
        Counter()
    )  # HTTP requests of every browser, PeerBridge's and the EHR's pages
    _sent_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, stack: Stack, patient: str, timeout: float = 30.0) -> None:
        self.stack = stack
        self.patient = patient
        self.timeout = timeout
        self.http = requests.Session()
        self.http.hooks["response"].append(self._count)

    @classmethod
    def _count(cls, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        with cls._sent_lock:
            cls.sent[urlsplit(response.url).netloc] += 1

    def _get(self, step: str, url: str, expect: int) -> requests.Response:
        try:
            response = self.http.get(url, allow_redirects=False, timeout=self.timeout)
        except requests.RequestException as exc:
            raise StepError(step, type(exc).__name__) from exc
        if response.status_code != expect:
            raise StepError(step, f"HTTP {response.status_code}")
        return response

    def launch(self, user: str = USER) -> str:
        """An EHR launch from the chart; returns the launch handle."""
        launch = self.stack.admin("POST", "launches", json={"patient": self.patient, "user": user})[
            "launch"
        ]
        query = urlencode({"iss": self.stack.fhir_base, "launch": launch})
        start = self._get("launch", f"{self.stack.app_url}/launch?{query}", 302)
        try:
            ehr = requests.get(
                start.headers["Location"],
                allow_redirects=False,
                timeout=self.timeout,
                hooks={"response": self._count},
            )
        except requests.RequestException as exc:
            raise StepError("launch", f"authorize {type(exc).__name__}") from exc
        if ehr.status_code != 302:
            raise StepError("launch", f"authorize HTTP {ehr.status_code}")
        back = urlsplit(ehr.headers["Location"])
        callback = self._get("launch", f"{self.stack.app_url}{back.path}?{back.query}", 302)
        found = re.fullmatch(r"/l/([\w-]+)/patient", urlsplit(callback.headers["Location"]).path)
        if not found:
            raise StepError("launch", "callback did not land on the patient page")
        return found.group(1)

    def patient_view(self, handle: str) -> None:
        self._get("patient view", f"{self.stack.app_url}/l/{handle}/patient", 200)

    def referral_form(self, handle: str, program_id: str, *, again: bool = True) -> dict[str, str]:
        """The propose form's fields. When the patient already has a referral to the program the
        page asks first; a clinician who means another one follows "Propose another referral"
        (`again`), one who does not stops there (AlreadyReferred)."""
        url = f"{self.stack.app_url}/l/{handle}/referrals/new?program={program_id}"
        page = self._get("referral form", url, 200).text
        form = page_form(page, "/referrals")
        link = AGAIN.search(page)
        if form is None and link:
            if not again:
                raise AlreadyReferred("referral form", "already referred: asked first")
            url = urljoin(self.stack.app_url, html.unescape(link.group(1)))
            page = self._get("referral form", url, 200).text
            form = page_form(page, "/referrals")
        if form is None or not form.values.get("csrf_token") or not form.values.get("identifier"):
            raise StepError("referral form", "no csrf token or identifier in the form")
        return {**form.values, "program": program_id, "priority": "routine", "note": "load test"}

    def submit(self, handle: str, form: dict[str, str]) -> None:
        try:
            response = self.http.post(
                f"{self.stack.app_url}/l/{handle}/referrals",
                data=form,
                allow_redirects=False,
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            raise StepError("propose referral", type(exc).__name__) from exc
        if response.status_code == 409 and AGAIN.search(response.text):
            raise AlreadyReferred("propose referral", "already referred: asked first")
        if response.status_code != 303:
            raise StepError("propose referral", f"HTTP {response.status_code}")

    def _post(self, step: str, url: str, data: dict[str, str]) -> requests.Response:
        try:
            return self.http.post(url, data=data, allow_redirects=False, timeout=self.timeout)
        except requests.RequestException as exc:
            raise StepError(step, type(exc).__name__) from exc

    def worklist(self, handle: str) -> str:
        return self._get("worklist", f"{self.stack.app_url}/l/{handle}/worklist", 200).text

    def complete(self, handle: str, identifier: str, worklist_page: str = "") -> None:
        """The social worker completes a draft: phone call to the patient's contact, consent
        recorded; a review step ("Check before sending") is confirmed when the page has one."""
        if worklist_page and f"/referrals/{identifier}/complete" not in worklist_page:
            raise StepError("complete referral", "the draft is not on the worklist")
        url = f"{self.stack.app_url}/l/{handle}/referrals/{identifier}/complete"
        page = self._get("complete referral", url, 200).text
        form = page_form(page, "/complete")
        if form is None:
            raise StepError("complete referral", "no completion form on the page")
        data = {
            **form.values,
            "consent_given": "y",
            "consent_by": "Parent, by phone",
            "contact_preference": "phone",
            "language": "en",
            "note": "soak test",
        }
        if not data.get("contact_person"):
            data["contact_person"] = form.first_choice.get("contact_person", "")
        for _step in range(3):  # the form, then at most a review step or two
            response = self._post("complete referral", url, data)
            if response.status_code == 303:
                return
            review = page_form(response.text, "/complete") if response.status_code == 200 else None
            send = review.button("send") if review else None
            if review is None or send is None:
                raise StepError("complete referral", f"HTTP {response.status_code}")
            data = {**review.values, send[0]: send[1]}
        raise StepError("complete referral", "the review step did not end")

    def record_outcome(self, handle: str, identifier: str, outcome: str = "contact-made") -> None:
        url = f"{self.stack.app_url}/l/{handle}/referrals/{identifier}"
        page = self._get("record outcome", f"{url}?record=outcome", 200).text
        form = page_form(page, "/outcome")
        if form is None:
            raise StepError("record outcome", "no outcome form on the referral page")
        data = {**form.values, "outcome": outcome, "note": "soak test", "program": ""}
        response = self._post("record outcome", f"{url}/outcome", data)
        if response.status_code != 303:
            raise StepError("record outcome", f"HTTP {response.status_code}")


class PageForm:
    """One <form> of a page: where it posts, the values it would send as it stands (hidden and
    filled inputs, checked boxes, selected options), its first radio choice per name, and its
    submit buttons."""

    def __init__(self, action: str) -> None:
        self.action = action
        self.values: dict[str, str] = {}
        self.first_choice: dict[str, str] = {}
        self.buttons: list[tuple[str, str]] = []

    def button(self, value: str) -> tuple[str, str] | None:
        return next((b for b in self.buttons if b[1] == value), None)


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[PageForm] = []
        self._form: PageForm | None = None
        self._textarea = ""
        self._select = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._form = PageForm(a.get("action", ""))
            self.forms.append(self._form)
            return
        form = self._form
        if form is None:
            return
        name = a.get("name", "")
        if tag == "input" and name:
            kind = a.get("type", "text")
            if kind in ("radio", "checkbox"):
                form.first_choice.setdefault(name, a.get("value", "on"))
                if "checked" in a:
                    form.values[name] = a.get("value", "on")
            elif kind == "submit":
                form.buttons.append((name, a.get("value", "")))
            else:
                form.values[name] = a.get("value", "")
        elif tag == "button" and a.get("type", "submit") == "submit":
            form.buttons.append((name, a.get("value", "")))
        elif tag == "textarea" and name:
            self._textarea = name
            form.values[name] = ""
        elif tag == "select" and name:
            self._select = name
        elif tag == "option" and self._select and "selected" in a:
            form.values[self._select] = a.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        elif tag == "textarea":
            self._textarea = ""
        elif tag == "select":
            self._select = ""

    def handle_data(self, data: str) -> None:
        if self._form is not None and self._textarea:
            self._form.values[self._textarea] += data


def page_form(page: str, action_ends: str) -> PageForm | None:
    """The first form of the page whose action ends with `action_ends`."""
    parser = _FormParser()
    parser.feed(page)
    return next((f for f in parser.forms if f.action.split("?")[0].endswith(action_ends)), None)


def seed_patients() -> list[str]:
    bundle = json.loads(SEED_PATIENTS.read_text(encoding="utf-8"))
    return [
        e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    ]


def program_ids() -> list[str]:
    return [p.id for p in load_directory_file(DEFAULT_DIRECTORY)]


def program_names() -> dict[str, str]:
    """Program id -> the name PeerBridge's ServiceRequests show for it."""
    return {p.id: p.name for p in load_directory_file(DEFAULT_DIRECTORY)}


def warm_up(stack: Stack, patients: list[str]) -> int:
    """One launch per patient before the clock starts: the dev EHR creates its id_token signing
    key on first use (concurrent first launches race there), and the app fills its caches.
    Returns the cold-start errors (a user would have seen them), which count as errors."""
    errors = 0
    for patient in patients:
        browser = Browser(stack, patient)
        try:
            browser.patient_view(browser.launch())
        except StepError:
            errors += 1
            browser = Browser(stack, patient)
            browser.patient_view(browser.launch())  # a second failure stops the run
    return errors


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.times: dict[str, list[float]] = defaultdict(list)
        self.errors: Counter[str] = Counter()
        self.iterations = 0
        self.submitted: dict[str, str] = {}  # identifier -> patient, each acknowledged (303)

    def timed(self, step: str, call: Any, *args: Any) -> Any:
        started = time.perf_counter()
        try:
            result = call(*args)
        except StepError as exc:
            with self.lock:
                self.errors[f"{exc.step}: {exc.detail}"] += 1
            raise
        elapsed = (time.perf_counter() - started) * 1000
        with self.lock:
            self.times[step].append(elapsed)
        return result


def run_user(
    stack: Stack,
    recorder: Recorder,
    patient: str,
    programs: list[str],
    stop_at: float,
    n: int,
    think: float = 0.0,
    full: bool = False,
) -> None:
    pause = random.Random(n)
    # Users arrive spread over one think time and pause 0.5-1.5x it, so they do not march in step.
    time.sleep(pause.uniform(0, think))
    i = 0
    while time.monotonic() < stop_at:
        browser = Browser(stack, patient)
        try:
            handle = recorder.timed("launch", browser.launch)
            recorder.timed("patient view", browser.patient_view, handle)
            time.sleep(think * pause.uniform(0.5, 1.5))  # the clinician reads the suggestions
            program = programs[(n + i) % len(programs)]
            form = recorder.timed("referral form", browser.referral_form, handle, program)
            time.sleep(think * pause.uniform(0.5, 1.5))  # ... and fills in the form
            recorder.timed("propose referral", browser.submit, handle, form)
            with recorder.lock:
                recorder.submitted[form["identifier"]] = patient
            time.sleep(think * pause.uniform(0.5, 1.5))
            if full:
                social_worker(recorder, Browser(stack, patient), form["identifier"], think, pause)
        except StepError:
            time.sleep(0.2)
        else:
            with recorder.lock:
                recorder.iterations += 1
        i += 1


def social_worker(
    recorder: Recorder, browser: Browser, identifier: str, think: float, pause: random.Random
) -> None:
    """The social worker opens PeerBridge for the patient, finds the draft on the worklist,
    completes it, and later records the family's answer."""
    handle = recorder.timed("launch", browser.launch, SOCIAL_WORKER)
    page = recorder.timed("worklist", browser.worklist, handle)
    time.sleep(think * pause.uniform(0.5, 1.5))
    recorder.timed("complete referral", browser.complete, handle, identifier, page)
    time.sleep(think * pause.uniform(0.5, 1.5))
    recorder.timed("record outcome", browser.record_outcome, handle, identifier)
    time.sleep(think * pause.uniform(0.5, 1.5))


STEPS = (
    "launch",
    "patient view",
    "referral form",
    "propose referral",
    "worklist",
    "complete referral",
    "record outcome",
)


def report(recorder: Recorder, seconds: float, users: int) -> dict[str, Any]:
    steps = {}
    total_requests = 0
    for step in STEPS:
        if step not in recorder.times and STEPS.index(step) > 3:
            continue  # the social worker's steps, only in the full flow
        values = recorder.times.get(step, [])
        total_requests += len(values)
        steps[step] = {
            "count": len(values),
            "p50_ms": round(percentile(values, 50), 1),
            "p95_ms": round(percentile(values, 95), 1),
            "p99_ms": round(percentile(values, 99), 1),
        }
    return {
        "users": users,
        "seconds": round(seconds, 1),
        "cpus": os.cpu_count(),
        "iterations": recorder.iterations,
        "iterations_per_s": round(recorder.iterations / seconds, 2),
        "steps_per_s": round(total_requests / seconds, 2),
        "errors": sum(recorder.errors.values()),
        "error_kinds": dict(recorder.errors),
        "steps": steps,
    }


def app_warnings(log: Path) -> dict[str, int]:
    """The app's warning and error messages by kind (its logs carry no PHI or tokens)."""
    kinds: Counter[str] = Counter()
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if "[CRITICAL]" in line or "[ERROR]" in line:  # gunicorn's own error log
            kinds[line.split("] ", 2)[-1][:120]] += 1
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("level") in ("WARNING", "ERROR"):
            kinds[str(entry.get("message", ""))[:120]] += 1
    return dict(kinds.most_common(10))


def print_report(result: dict[str, Any]) -> None:
    print(
        f"\n{result['users']} users (think {result.get('think_seconds', 0)} s), "
        f"{result['seconds']} s, {result['cpus']} CPUs: "
        f"{result['iterations']} iterations ({result['iterations_per_s']}/s), "
        f"{result['steps_per_s']} steps/s, {result['errors']} errors"
    )
    print(f"{'step':<18}{'count':>7}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}")
    for step, s in result["steps"].items():
        print(f"{step:<18}{s['count']:>7}{s['p50_ms']:>9}{s['p95_ms']:>9}{s['p99_ms']:>9}")
    for kind, count in result["error_kinds"].items():
        print(f"  error {kind}: {count}")
    for message, count in result.get("app_warnings", {}).items():
        print(f"  app log: {message} (x{count})")
    if "referrals_acknowledged" in result:
        print(
            f"referrals acknowledged {result['referrals_acknowledged']}, not in the EHR exactly "
            f"once {result['referrals_not_in_ehr_once']}; cold-start errors "
            f"{result['cold_start_errors']} (all counted as errors)"
        )
    p95 = result["steps"]["patient view"]["p95_ms"]
    ok = result["errors"] == 0 and p95 <= 300
    print(f"goal (0 errors, patient view p95 <= 300 ms): {'met' if ok else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument(
        "--think",
        type=float,
        default=2.0,
        help="mean seconds a user pauses after a page, as clinicians do (0: a saturation test)",
    )
    parser.add_argument("--json", default="", help="also write the result to this file")
    args = parser.parse_args(argv)
    patients = [p for p in seed_patients() if p != "adult-many-conditions"]
    programs = program_ids()
    with tempfile.TemporaryDirectory(prefix="pb-load-") as tmp:
        stack = Stack(Path(tmp), workers=args.workers)
        stack.start()
        try:
            cold_start_errors = warm_up(stack, patients)
            recorder = Recorder()
            started = time.monotonic()
            stop_at = started + args.duration
            threads = [
                threading.Thread(
                    target=run_user,
                    args=(
                        stack,
                        recorder,
                        patients[n % len(patients)],
                        programs,
                        stop_at,
                        n,
                        args.think,
                    ),
                    daemon=True,
                )
                for n in range(args.users)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            result = report(recorder, time.monotonic() - started, args.users)
            result["think_seconds"] = args.think
            result["cold_start_errors"] = cold_start_errors
            result["errors"] += cold_start_errors
            # Every acknowledged referral must reach the EHR (the outbox drains in the app).
            deadline = time.monotonic() + 120
            missing = dict(recorder.submitted)
            while missing and time.monotonic() < deadline:
                missing = {i: p for i, p in missing.items() if stack.referral_count(p, i) != 1}
                if missing:
                    time.sleep(2)
            result["referrals_acknowledged"] = len(recorder.submitted)
            result["referrals_not_in_ehr_once"] = len(missing)
            result["errors"] += len(missing)
        finally:
            stack.stop()
        result["app_warnings"] = app_warnings(Path(tmp) / "app.log")
    print_report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")
    p95 = result["steps"]["patient view"]["p95_ms"]
    return 0 if result["errors"] == 0 and p95 <= 300 else 1


if __name__ == "__main__":
    sys.exit(main())
