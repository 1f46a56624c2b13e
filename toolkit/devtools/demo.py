"""`runner-scaler demo`: the whole scaler on one machine, in accelerated time, against local stand-ins.

moto serves AWS on 127.0.0.1; a fake GitLab sends real webhooks (real headers, real token) to the REAL Chalice
app served by chalice.local; the demo plays the AWS services that invoke the app's other handlers (EventBridge
schedules and rules, SQS, SNS alarms, Secrets Manager rotation, EC2 Spot) and simulated machines run a job
trace. It also stages an incident (throttled Auto Scaling reads) and a Spot interruption. Every handler in
app.py runs its production code path; only the clock is faster. This module builds and plays the demo; its
parts live beside it: the clock (demo_clock), the trace player (demo_trace), the log capture (demo_logs), the
staged incident (demo_drills) and the report (demo_report). May import chalicelib and sim; never imported by
app.py.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live

from chalicelib import runtime
from chalicelib.aws import AwsClients
from chalicelib.capacity.engine import slots_per_new_machine
from chalicelib.config import Config, Pool, load_config_file, parse_config
from chalicelib.errors import ConfigError
from chalicelib.resources import ENV_PREFIX, ENV_QUEUE_URL, Names, names_from_env
from chalicelib.runtime import Runtime
from sim.traces import TraceError, TraceJob, read_trace
from toolkit.devtools.alarms import CloudWatch, scaler_alarms
from toolkit.devtools.bootstrap import bootstrap
from toolkit.devtools.demo_clock import AcceleratedClock
from toolkit.devtools.demo_drills import DRILL_DURATION, Drill
from toolkit.devtools.demo_logs import platform_quiet
from toolkit.devtools.demo_report import (
    Marker,
    Recorder,
    clock_text,
    live_view,
    summarise,
    write_timeline,
    write_timeline_csv,
)
from toolkit.devtools.demo_trace import TracePlayer, check_routable
from toolkit.devtools.event_sources import EventSources, RotationService, SpotInterruptions
from toolkit.devtools.fake_gitlab import DEFAULT_ASSIGNMENT_WINDOW, TERMINAL, FakeGitLab
from toolkit.devtools.local_app import LocalApp, load_app, wait_until_serving
from toolkit.devtools.local_aws import LocalAws
from toolkit.devtools.machines import SimulatedMachines

__all__ = [
    "DEFAULT_TRACE",
    "DEMO_CONFIG",
    "AcceleratedClock",
    "Demo",
    "DemoOptions",
    "DemoResult",
    "DemoWorld",
    "Drill",
    "TraceError",
    "TracePlayer",
    "check_routable",
    "load_demo_config",
    "platform_quiet",
]

logger = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parents[2]
DEFAULT_TRACE = PROJECT_DIR / "sim" / "traces" / "demo.csv"

#: The demo's own config: three pools a new user recognises (gitlab-runner's knobs, small numbers).
#: `gitlab.url` is replaced by the fake GitLab's address when the demo starts.
DEMO_CONFIG = """
[gitlab]
url = "https://gitlab.example.com"

[[pools]]
name = "linux"
asg = "runner-scaler-linux"
platform = "linux"
tags = ["linux", "docker"]
run_untagged = true
capacity_per_instance = 1
max_use_count = 1
max_instances = 10
max_growth_rate = 8
boot_timeout = "10m"
instance_types = ["m7i.large"]
spot = true

  [[pools.policy]]
  idle_count = 1
  idle_time = "4m"

[[pools]]
name = "linux-xl"
asg = "runner-scaler-linux-xl"
platform = "linux"
tags = ["linux", "docker", "xl"]
capacity_per_instance = 1
max_use_count = 4
max_instances = 6
instance_types = ["m7i.2xlarge"]

  [[pools.policy]]
  idle_count = 0
  idle_time = "3m"

[[pools]]
name = "windows"
asg = "runner-scaler-windows"
platform = "windows"
executor = "shell"
tags = ["windows"]
capacity_per_instance = 1
max_use_count = 1
max_instances = 3
boot_timeout = "20m"
instance_types = ["m6i.xlarge"]

  [[pools.policy]]
  idle_count = 0
  idle_time = "4m"
"""

#: Wall seconds a step waits for the webhooks it caused: GitLab delivers within about a second, so they land
#: in the same simulated step, before the next reconcile.
WEBHOOK_WAIT = 10.0


@dataclass(frozen=True)
class DemoOptions:
    """What `runner-scaler demo` was asked for. Times are simulated unless named `wall`."""

    trace: Path = DEFAULT_TRACE
    speed: float = 40.0  # simulated seconds per wall second
    max_step: float = 10.0  # simulated seconds one platform step may cover at most
    duration: timedelta = timedelta(minutes=90)  # stop here even if the trace is not done
    config: Path | None = None  # None: DEMO_CONFIG
    out: Path = Path("demo-out")
    step_wall: float = 0.1  # wall seconds between two moves of the platform
    sample_every: timedelta = timedelta(seconds=15)
    live: bool = True  # draw the rich live view (off in tests and when stdout is not a terminal)
    settle: timedelta | None = None  # after the last job: how long to watch scale-in (None: from idle_time)
    drill: bool = True  # stage an AWS throttling incident a third into the trace (see Drill)
    spot_interruptions: int = 1  # Spot instances EC2 reclaims in the last third of the trace


@dataclass
class DemoResult:
    summary: dict[str, Any]
    summary_path: Path
    timeline_path: Path
    log_path: Path
    wall_seconds: float
    #: The 127.0.0.1 ports the demo listened on (moto, the app, the fake GitLab); all free again now.
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.summary["ok"])

    @property
    def exit_code(self) -> int:
        """0 when every invariant held (a stop at the --duration limit breaks none), 130 after Ctrl-C (as a
        shell reports SIGINT), 1 otherwise."""
        if self.summary["interrupted"]:
            return 130
        return 0 if self.ok else 1


def load_demo_config(path: Path | None) -> Config:
    """The built-in config, or the operator's; refused early if it needs what a local stack cannot serve."""
    config = parse_config(DEMO_CONFIG, "demo config (built in)") if path is None else load_config_file(path)
    hosted = [f"pools[{i}] ({p.name}).hosts" for i, p in enumerate(config.pools) if p.hosts is not None]
    if hosted:
        raise ConfigError(
            str(path),
            [
                f"{where}: dedicated-host pools cannot run in the demo: moto has no License Manager and no "
                "Resource Groups GroupResources/ListGroupResources; remove [pools.hosts] for the demo"
                for where in hosted
            ],
        )
    return config


# --------------------------------------------------------------------------------------------------
# The demo


@dataclass
class DemoWorld:
    """Everything running during a demo; built by `Demo._build`, torn down by the ExitStack. A step hook
    (`Demo(on_step=...)`) sees it after each platform step."""

    config: Config
    names: Names
    clock: AcceleratedClock
    gitlab: FakeGitLab
    app: LocalApp
    sources: EventSources
    machines: SimulatedMachines
    player: TracePlayer
    recorder: Recorder
    app_aws: AwsClients
    local_aws: LocalAws
    rotation: RotationService
    cloudwatch: CloudWatch
    drill: Drill | None
    spot: SpotInterruptions
    notes: deque[str] = field(default_factory=lambda: deque(maxlen=4))
    jobs_done_at: datetime | None = None  # when the last trace job ended
    stopped_at_duration: bool = False  # the --duration limit ended the run before every job finished


class Demo:
    """Builds the local world, plays the trace at `speed`, and writes the summary and the timeline."""

    def __init__(
        self,
        options: DemoOptions,
        console: Console | None = None,
        *,
        on_step: Callable[[DemoWorld, datetime], None] | None = None,
    ) -> None:
        """`on_step(world, now)` runs after every platform step, in the demo's thread: tests stage what a
        trace cannot (an operator killing a machine, a Ctrl-C at a chosen moment) through the real world."""
        self.options = options
        self.console = console or Console()
        self._on_step = on_step

    def run(self) -> DemoResult:
        """Run to the end (or Ctrl-C); every server and thread is stopped before this returns."""
        options = self.options
        trace = read_trace(options.trace)
        config = load_demo_config(options.config)
        check_routable(trace, config, str(options.trace))
        out = options.out
        log_path = out / "demo.log"
        notes: deque[str] = deque(maxlen=4)
        wall_start = time.monotonic()
        interrupted = False
        clock = AcceleratedClock(
            datetime.now(UTC).replace(second=0, microsecond=0), options.speed, max_step=options.max_step
        )
        with ExitStack() as stack:
            stack.enter_context(platform_quiet(notes, log_path, clock))
            if options.live:
                self.console.print(
                    "[dim]starting moto, the fake GitLab and the Chalice app on 127.0.0.1…[/dim]"
                )
            world = self._build(stack, trace, config, notes, clock)
            ports = {
                "moto": world.local_aws.port,
                "app": world.app.port,
                "gitlab": int(world.gitlab.url.rsplit(":", 1)[1]),
            }
            try:
                self._play(world)
            except KeyboardInterrupt:
                interrupted = True
            now = world.clock.now()
            summary = self._summary(world, now, interrupted)
            timeline = out / "timeline.png"
            pools = [p.name for p in config.pools]
            write_timeline(
                world.recorder.samples,
                pools,
                timeline,
                f"runner-scaler demo: {options.trace.name}, {len(trace)} jobs",
                _markers(world),
            )
            write_timeline_csv(world.recorder.samples, pools, out / "timeline.csv")
        summary["wall_seconds"] = round(time.monotonic() - wall_start, 1)
        summary_path = out / "summary.json"
        _write_json(summary_path, summary)
        return DemoResult(summary, summary_path, timeline, log_path, summary["wall_seconds"], ports)

    # -- building the world ---------------------------------------------------------------------

    def _build(
        self,
        stack: ExitStack,
        trace: list[TraceJob],
        config: Config,
        notes: deque[str],
        clock: AcceleratedClock,
    ) -> DemoWorld:
        options = self.options
        local_aws = stack.enter_context(LocalAws())
        app_aws, platform_aws, machine_aws = local_aws.clients(), local_aws.clients(), local_aws.clients()
        # The delivery sender thread plays GitLab's Sidekiq: webhooks leave asynchronously, as on GitLab.
        # A machine's job request is assigned at a later platform step (toolkit.devtools.machines,
        # ASSIGN_SECONDS), up to `max_step` after its `active?` check: the fake's assignment window spans a
        # step, so the demo's coarse time expires no request GitLab would have served.
        window = timedelta(seconds=options.max_step) + DEFAULT_ASSIGNMENT_WINDOW
        gitlab = stack.enter_context(FakeGitLab(now=clock.now, delivery="async", assignment_window=window))
        names = names_from_env()  # the prefix app.py was imported with: its SQS handler names our queue
        config = _point_at(config, gitlab.url, names)
        webhook_token = uuid.uuid4().hex
        local = bootstrap(app_aws, config, names, [webhook_token])
        _prepare_local_stack(platform_aws, config, gitlab.token)
        rt = Runtime(
            {ENV_PREFIX: names.prefix, ENV_QUEUE_URL: local.queue_url},
            aws=app_aws,
            config=config,
            clock=clock.now,
        )
        runtime.install(rt)
        stack.callback(runtime.install, None)
        app = stack.enter_context(LocalApp(load_app()))
        wait_until_serving(f"{app.url}/health")
        rotation = RotationService(app, platform_aws, local_aws, names, clock.elapsed)
        rotation.deploy(app_aws)
        project = gitlab.create_project("demo/app")
        gitlab.add_hook(project, f"{app.url}/webhooks/gitlab", token=webhook_token)
        recorder = Recorder(config, gitlab, clock.origin, notes=notes)
        player = TracePlayer(trace, config, gitlab, project, recorder, str(options.trace))
        cloudwatch = CloudWatch(clock.origin, scaler_alarms(config, names))
        sources = EventSources(
            app, platform_aws, config, names, cloudwatch, region=local_aws.region, speed=options.speed
        )
        drill: Drill | None = None
        if options.drill:
            # A third into the trace, while work is queued: the incident shows in waits and alarms.
            start = player.last_created_s / 3
            incident = drill = Drill(start, start + DRILL_DURATION.total_seconds())
            local_aws.inject_fault(
                app_aws,
                "autoscaling",
                incident.operation,
                incident.code,
                lambda: incident.active(clock.elapsed()),
            )
            # Messages that failed in the drill come back up to a visibility timeout later: still the drill.
            grace = incident.end_s + 180.0
            app.incident = lambda: incident.start_s <= clock.elapsed() < grace
        machines = SimulatedMachines(
            config,
            names,
            machine_aws,
            gitlab,
            duration_of=player.duration_of,
            lifecycle=sources,
            runner_from_secret=sources.has_lifecycle,
            stamp_launch=local_aws.set_launch_time,
        )
        count = options.spot_interruptions
        spot = SpotInterruptions(
            sources,
            machines,
            platform_aws,
            config,
            [player.last_created_s * (0.6 + 0.3 * k / max(1, count)) for k in range(count)],
            clock.elapsed,
            region=local_aws.region,
        )
        return DemoWorld(
            config,
            names,
            clock,
            gitlab,
            app,
            sources,
            machines,
            player,
            recorder,
            app_aws,
            local_aws,
            rotation,
            cloudwatch,
            drill,
            spot,
            notes,
        )

    # -- playing --------------------------------------------------------------------------------

    def _play(self, world: DemoWorld) -> None:
        options = self.options
        world.clock.start()
        last_sample: datetime | None = None
        # Secrets Manager's schedule, compressed into the trace: one rotation at its midpoint.
        rotate_at: float | None = world.player.last_created_s / 2
        with self._live() as live:
            while True:
                wall = time.monotonic()
                now = world.clock.advance()
                world.player.release(world.clock.elapsed())
                world.gitlab.flush(timeout=WEBHOOK_WAIT)
                if world.rotation.enabled and rotate_at is not None and world.clock.elapsed() >= rotate_at:
                    world.rotation.rotate("scheduled rotation")
                    rotate_at = None
                world.sources.poll(now)
                world.spot.poll(now)
                world.rotation.run_queued()
                world.machines.step(now)
                world.gitlab.flush(timeout=WEBHOOK_WAIT)
                if self._on_step is not None:
                    self._on_step(world, now)
                if last_sample is None or now - last_sample >= options.sample_every:
                    world.recorder.sample(now, world.machines)
                    last_sample = now
                if live is not None:
                    live.update(self._frame(world, now))
                if self._finished(world, now):
                    world.recorder.sample(now, world.machines)
                    return
                time.sleep(max(0.0, options.step_wall - (time.monotonic() - wall)))

    @contextmanager
    def _live(self) -> Iterator[Live | None]:
        if not self.options.live:
            yield None
            return
        with Live(console=self.console, refresh_per_second=4, transient=False) as live:
            yield live

    def _frame(self, world: DemoWorld, now: datetime) -> Any:
        gitlab = world.gitlab.delivery_stats
        status = (
            f"webhooks sent {gitlab['sent']} (failed {gitlab['failed']}) · AWS calls by the app "
            f"{_total(world.app_aws.calls)} · GitLab API requests {_total(world.gitlab.requests)}"
        )
        return live_view(
            world.recorder,
            world.machines,
            world.app.invocations,
            now,
            speed=self.options.speed,
            status_lines=[
                status,
                world.rotation.describe(),
                world.cloudwatch.describe(),
                *([world.drill.describe(world.clock.elapsed())] if world.drill else []),
                *([spot_line] if (spot_line := world.spot.describe()) else []),
            ],
        )

    def _finished(self, world: DemoWorld, now: datetime) -> bool:
        """Done when the trace ran and every pool scaled back to its idle floor (or the time is up)."""
        elapsed = (now - world.clock.origin).total_seconds()
        jobs_left = not world.player.done or any(j.status not in TERMINAL for j in world.recorder.jobs())
        if elapsed >= self.options.duration.total_seconds():
            world.notes.append(f"stopped at the --duration limit ({clock_text(elapsed)})")
            world.stopped_at_duration = jobs_left
            return True
        if jobs_left:
            return False
        settle = self.options.settle
        if settle is None:
            settle = max(p.active_policy(now).idle_time for p in world.config.pools) + timedelta(minutes=3)
        if world.jobs_done_at is None:
            world.jobs_done_at = now
        if now - world.jobs_done_at >= settle:
            return True
        return all(len(world.machines.live(p.name)) <= _idle_floor(p, now) for p in world.config.pools)

    def _summary(self, world: DemoWorld, now: datetime, interrupted: bool) -> dict[str, Any]:
        extra = {
            "trace": str(self.options.trace),
            "speed": self.options.speed,
            "effective_speed": round(world.clock.effective_speed, 1),
            "webhooks": dict(world.gitlab.delivery_stats),
            "gitlab_api_requests": _total(world.gitlab.requests),
            "aws_calls_by_app": _total(world.app_aws.calls),
            "lifecycle_actions_completed": world.local_aws.stubbed["autoscaling.CompleteLifecycleAction"],
            "alarms": {
                a.spec.name: [{"at_seconds": at, "from": old, "to": new} for at, old, new in a.changes]
                for a in world.cloudwatch.alarms
                if a.changes
            },
            "alarm_state_changes": len(world.sources.alarm_changes),
            "drill": (
                {
                    "from_seconds": round(world.drill.start_s, 1),
                    "to_seconds": round(world.drill.end_s, 1),
                    "fault": f"autoscaling.{world.drill.operation}: {world.drill.code}",
                    "calls_failed": world.local_aws.faulted[f"autoscaling.{world.drill.operation}"],
                }
                if world.drill
                else None
            ),
            "spot_interruptions": [
                {
                    "instance_id": i.instance_id,
                    "pool": i.pool,
                    "jobs_interrupted": list(i.job_ids),
                    "at_seconds": round((i.at - world.clock.origin).total_seconds(), 1),
                }
                for i in world.machines.interruptions
            ],
            "spot_warnings": [
                {
                    "instance_id": s.instance_id,
                    "pool": s.pool,
                    "at_seconds": round(s.warned_at_s or s.at_s, 1),
                }
                for s in world.spot.planned
                if s.instance_id
            ],
            "trace_pipelines_not_created": world.player.pipelines_left,
            "jobs_retried": world.recorder.retried(),
            "tls_rotations": [
                {
                    "at_seconds": round(r.at_s, 1),
                    "reason": r.reason,
                    "result": r.result,
                    "ca_sha256": r.ca_sha256,
                }
                for r in world.rotation.rotations
            ],
            "handlers_not_invoked": sorted(
                h.name for h in world.app.handlers if world.app.invocations.calls[h.name] == 0
            ),
        }
        kinds = {h.name: h.kind for h in world.app.handlers}
        return summarise(
            world.recorder,
            world.machines,
            world.app.invocations,
            kinds,
            now,
            extra=extra,
            interrupted=interrupted,
            stopped_at_duration=world.stopped_at_duration,
        )


def _markers(world: DemoWorld) -> list[Marker]:
    """The drill (a span) and the rotations after deploy (instants), as the timeline marks them."""
    markers = [Marker("throttling drill", world.drill.start_s, world.drill.end_s)] if world.drill else []
    markers += [Marker("TLS rotation", r.at_s) for r in world.rotation.rotations if r.at_s > 0]
    markers += [Marker("Spot warning", s.warned_at_s or s.at_s) for s in world.spot.planned if s.instance_id]
    return markers


def _total(counter: Counter[str]) -> int:
    """Sum of a counter other threads add keys to: dict() copies it in one step, iterating it may not."""
    return sum(dict(counter).values())


def _idle_floor(pool: Pool, now: datetime) -> int:
    """Machines a pool keeps with no job: its active policy's idle_count, in machines."""
    return math.ceil(pool.active_policy(now).idle_count / slots_per_new_machine(pool))


def _point_at(config: Config, gitlab_url: str, names: Names) -> Config:
    """The config aimed at the fake GitLab, its API token read from Secrets Manager as in production."""
    settings = config.gitlab.model_copy(
        update={
            "url": gitlab_url,
            "api_token_secret": config.gitlab.api_token_secret or names.gitlab_token_secret,
        }
    )
    return config.model_copy(update={"gitlab": settings})


def _prepare_local_stack(aws: AwsClients, config: Config, token: str) -> None:
    """What infra/ adds beyond bootstrap(): the GitLab API token secret."""
    aws.call("secretsmanager", "create_secret", Name=config.gitlab.api_token_secret, SecretString=token)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


__all__ = [
    "DEFAULT_TRACE",
    "DEMO_CONFIG",
    "AcceleratedClock",
    "Demo",
    "DemoOptions",
    "DemoResult",
    "DemoWorld",
    "TraceError",
]
