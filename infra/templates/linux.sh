#!/bin/bash
# runner-scaler machine boot (Linux). Rendered per pool by infra/userdata.py; never holds a secret:
# the runner token and TLS material are read once at boot, by root, from this instance's own Secrets Manager
# secret, which is then deleted. Jobs never see the token nor reach the instance role (docs/security.md).
set -euo pipefail
umask 077

PREFIX="${prefix}"
EXECUTOR="${executor}"
MAX_BUILDS="${max_builds}"
WAIT_TIMEOUT="${wait_timeout}"
CACHE_BUCKET="${cache_bucket}"
# [pools.docker] as gitlab-runner flags (its common/config.go DockerConfig), and the Docker daemon's mirrors.
DOCKER_ARGS=(${docker_args})
SERVICES_PRIVILEGED="${services_privileged_env}"
REGISTRY_MIRRORS=${registry_mirrors}
# Docker on tcp://0.0.0.0:2376 with TLS (docker_tcp_tls): off by default, since the runner uses the socket.
DOCKER_TCP_TLS="${docker_tcp_tls}"
# The pool has a warm pool (warm_pool): this script must run at every boot, and hold while the machine is warm.
WARM_POOL="${warm_pool}"

imds() {
  local token
  token=$$(curl -sS -X PUT "http://169.254.169.254/latest/api/token" -H "X-aws-ec2-metadata-token-ttl-seconds: 300")
  curl -sS -H "X-aws-ec2-metadata-token: $${token}" "http://169.254.169.254/latest/$${1}"
}

INSTANCE_ID=$$(imds meta-data/instance-id)
REGION=$$(imds meta-data/placement/region)
export AWS_DEFAULT_REGION="$${REGION}"

if [ "$${WARM_POOL}" = "true" ]; then
  # A warm-pool machine boots once in the pool, is stopped, and is started again when it leaves the pool;
  # user data runs only at the first boot ("Use lifecycle hooks with a warm pool in Auto Scaling group"). So
  # this script installs itself in cloud-init's per-boot directory, whose scripts run at every boot
  # (cloud-init's scripts_per_boot module), and the next start runs it again.
  PER_BOOT=/var/lib/cloud/scripts/per-boot/runner-scaler.sh
  if [ "$$0" != "$${PER_BOOT}" ]; then install -D -m 0700 "$$0" "$${PER_BOOT}"; fi
  # While the group keeps this machine warm, its target lifecycle state is Warmed:Stopped or
  # Warmed:Hibernated ("Retrieve the target lifecycle state through instance metadata",
  # autoscaling/target-lifecycle-state). It holds no token then (the scaler writes none until the machine
  # leaves the pool) and starts no runner: it waits here until it is stopped, or, hibernated, until it is
  # resumed into service, when the state reads InService.
  while :; do
    case "$$(imds meta-data/autoscaling/target-lifecycle-state || true)" in
      Warmed:*) sleep ${secret_poll} ;;
      *) break ;;
    esac
  done
fi

# The secret appears once the launch lifecycle hook has run; wait for it rather than fail the boot.
SECRET_ID="$${PREFIX}/machines/$${INSTANCE_ID}"
SECRET=""
for _ in $$(seq 1 ${secret_tries}); do
  if SECRET=$$(aws secretsmanager get-secret-value --secret-id "$${SECRET_ID}" \
      --query SecretString --output text 2>/dev/null); then
    break
  fi
  sleep ${secret_poll}
done
if [ -z "$${SECRET}" ]; then
  echo "runner-scaler: no machine secret for $${INSTANCE_ID}; leaving it to the scaler's boot_timeout" >&2
  exit 1
fi
# Read once: delete it now, before any job can run, so that nothing on this machine reads it again (the
# role may delete only its own instance's secret, infra/policy.py). ForceDeleteWithoutRecovery deletes at
# once, no recovery window (Secrets Manager API Reference, DeleteSecret). Fail closed: a machine whose
# secret stays readable never starts its runner (the scaler's boot_timeout removes it).
aws secretsmanager delete-secret --secret-id "$${SECRET_ID}" --force-delete-without-recovery >/dev/null
field() { printf '%s' "$${SECRET}" | jq -r --arg k "$$1" '.[$$k] // empty'; }

# Only with docker_tcp_tls: Docker also on 2376 with TLS, server certificate signed by the fleet CA, clients
# must present one. Nothing in runner-scaler connects there (run-single talks to the local socket).
if [ "$${DOCKER_TCP_TLS}" = "true" ]; then
  install -d -m 0700 /etc/docker/certs
  field ca_bundle > /etc/docker/certs/ca.pem
  field server_cert > /etc/docker/certs/cert.pem
  field server_key > /etc/docker/certs/key.pem
  chmod 0600 /etc/docker/certs/key.pem
fi
# Merge our keys into /etc/docker/daemon.json, never replace it: what the AMI baked in (a registry mirror, a
# log driver, a data root) survives. python3 is on every cloud-init AMI (cloud-init is written in Python).
python3 - "$${REGISTRY_MIRRORS}" "$${DOCKER_TCP_TLS}" <<'PY'
import json, os, sys
path = "/etc/docker/daemon.json"
try:
    with open(path, encoding="utf-8") as file:
        daemon = json.load(file)
except FileNotFoundError:
    daemon = {}
except ValueError as exc:
    sys.exit(f"runner-scaler: {path} from the AMI is not JSON ({exc}); fix the image")
if sys.argv[2] == "true":
    daemon.update({"tlsverify": True, "tlscacert": "/etc/docker/certs/ca.pem", "tlscert": "/etc/docker/certs/cert.pem",
                   "tlskey": "/etc/docker/certs/key.pem", "hosts": ["unix:///var/run/docker.sock", "tcp://0.0.0.0:2376"]})
mirrors = daemon.get("registry-mirrors", []) + json.loads(sys.argv[1])
if mirrors:
    daemon["registry-mirrors"] = list(dict.fromkeys(mirrors))
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path + ".new", "w", encoding="utf-8") as file:
    json.dump(daemon, file, indent=2)
os.replace(path + ".new", path)
PY
if [ "$${DOCKER_TCP_TLS}" = "true" ]; then
  # daemon.json's "hosts" and the unit's -H flag may not both be given: the unit then starts dockerd bare.
  install -d /etc/systemd/system/docker.service.d
  printf '[Service]\nExecStart=\nExecStart=/usr/bin/dockerd\n' > /etc/systemd/system/docker.service.d/hosts.conf
  systemctl daemon-reload
fi
systemctl restart docker

# Jobs never reach the instance metadata service, so never the instance role's credentials. Shell jobs run
# as JOB_USER (below): the kernel rejects its packets to the metadata address by owner match. Container
# traffic to it is forwarded: DOCKER-USER rejects it, a chain Docker evaluates before its own rules and
# never flushes (Docker docs, "Packet filtering and firewalls", DOCKER-USER). The runner itself (root)
# keeps the service: it signs the S3 cache URLs it hands to jobs. The launch template enables no IPv6
# metadata endpoint, so IPv4 is the only way in.
JOB_USER=runner-job
id -u "$${JOB_USER}" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$${JOB_USER}"
iptables -I OUTPUT -d 169.254.169.254/32 -m owner --uid-owner "$${JOB_USER}" -j REJECT
iptables -N DOCKER-USER 2>/dev/null || true
iptables -I DOCKER-USER -d 169.254.169.254/32 -j REJECT

# A self-hosted GitLab's own CA: into the system trust store and the runner's tls-ca-file.
TLS_CA_ARGS=()
GITLAB_CA=$$(field gitlab_ca_bundle)
if [ -n "$${GITLAB_CA}" ]; then
  printf '%s\n' "$${GITLAB_CA}" > /usr/local/share/ca-certificates/runner-scaler-gitlab.crt
  update-ca-certificates
  TLS_CA_ARGS=(--tls-ca-file /usr/local/share/ca-certificates/runner-scaler-gitlab.crt)
fi

CACHE_ARGS=()
if [ -n "$${CACHE_BUCKET}" ]; then
  # Credentials come from the instance profile: no static keys anywhere (seed 002).
  CACHE_ARGS=(--cache-type s3 --cache-shared --cache-path "${cache_path}" --cache-s3-server-address s3.amazonaws.com
              --cache-s3-bucket-name "$${CACHE_BUCKET}" --cache-s3-bucket-location "$${REGION}"
              --cache-s3-authentication_type iam)
fi

SHELL_ARGS=()
if [ "$${EXECUTOR}" = shell ]; then
  # Shell jobs run as JOB_USER. run-single has no --user: it runs each build with an empty global config,
  # whose `user` is what the shell executor would switch to (gitlab-runner commands/single.go, common/build.go).
  # Its shell executor starts `bash` from PATH (shells/bash.go) with the runner's own environment
  # (executors/shell/shell.go): this shim, first on the runner's PATH, starts it as JOB_USER with a fresh
  # environment instead, so no job inherits CI_SERVER_TOKEN.
  install -d -m 0755 /usr/local/lib/runner-scaler
  printf '#!/bin/sh\nexec setpriv --reuid=%s --regid=%s --init-groups --reset-env /bin/bash "$$@"\n' \
    "$${JOB_USER}" "$${JOB_USER}" > /usr/local/lib/runner-scaler/bash
  chmod 0755 /usr/local/lib/runner-scaler/bash
  export PATH="/usr/local/lib/runner-scaler:$${PATH}"
  SHELL_ARGS=(--builds-dir "/home/$${JOB_USER}/builds" --cache-dir "/home/$${JOB_USER}/cache")
fi

RUNNER_TOKEN=$$(field runner_token)
GITLAB_URL=$$(field gitlab_url)
unset SECRET
# services_privileged = false has no flag spelling: its env tag (DOCKER_SERVICES_PRIVILEGED) carries it.
if [ -n "$${SERVICES_PRIVILEGED}" ]; then export DOCKER_SERVICES_PRIVILEGED="$${SERVICES_PRIVILEGED}"; fi
# The token rides in the runner's environment, never on argv (which `ps` and /proc/*/cmdline show to every
# local user): run-single reads CI_SERVER_TOKEN (gitlab-runner common/config.go, RunnerCredentials.Token;
# docs/commands "gitlab-runner run-single"). Only root can read a root process's environment.
CI_SERVER_TOKEN="$${RUNNER_TOKEN}" gitlab-runner run-single --url "$${GITLAB_URL}" --executor "$${EXECUTOR}" \
  --max-builds "$${MAX_BUILDS}" --wait-timeout "$${WAIT_TIMEOUT}" \
  --description "runner-scaler/${pool}/$${INSTANCE_ID}" \
  "$${DOCKER_ARGS[@]}" "$${TLS_CA_ARGS[@]}" "$${CACHE_ARGS[@]}" "$${SHELL_ARGS[@]}" || true
unset RUNNER_TOKEN
# run-single has exited: --max-builds jobs done, --wait-timeout passed without a job, or a runner error.
# No job runs here any more, and an idle machine whose runner stopped listening must not count as
# capacity: leave now. The machine holds no right to end an instance (a job that got one could end any
# machine of its pool): it shuts itself down, the launch template's instance-initiated shutdown behaviour
# terminates it, and the scaler, told by EC2's state-change event, decrements its group (docs/security.md).
# A power-off, not a halt: a halt initiates no shutdown, and the instance would go on running (Amazon EC2
# User Guide, "Change instance initiated shutdown behavior").
shutdown -P now
