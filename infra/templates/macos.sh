#!/bin/zsh
# runner-scaler machine boot (EC2 Mac). Rendered per pool by infra/userdata.py; holds no secret.
# EC2 Mac runs user data through ec2-macos-init; gitlab-runner, jq and the AWS CLI come with the AMI.
# The runner runs as root; jobs run as JOB_USER, who has no sudo (ec2-user has it, passwordless) and whose
# packets to the instance metadata service pf drops (docs/security.md).
set -eu
umask 077

PREFIX="${prefix}"
EXECUTOR="${executor}"
MAX_BUILDS="${max_builds}"
WAIT_TIMEOUT="${wait_timeout}"
CACHE_BUCKET="${cache_bucket}"
REUSE_WAIT="${reuse_wait}"

TOKEN=$$(curl -sS -X PUT "http://169.254.169.254/latest/api/token" -H "X-aws-ec2-metadata-token-ttl-seconds: 300")
INSTANCE_ID=$$(curl -sS -H "X-aws-ec2-metadata-token: $${TOKEN}" http://169.254.169.254/latest/meta-data/instance-id)
REGION=$$(curl -sS -H "X-aws-ec2-metadata-token: $${TOKEN}" http://169.254.169.254/latest/meta-data/placement/region)
export AWS_DEFAULT_REGION="$${REGION}"

SECRET_ID="$${PREFIX}/machines/$${INSTANCE_ID}"
SECRET=""
for _ in $$(seq 1 ${secret_tries}); do
  if SECRET=$$(aws secretsmanager get-secret-value --secret-id "$${SECRET_ID}" \
      --query SecretString --output text 2>/dev/null); then
    break
  fi
  sleep ${secret_poll}
done
[ -n "$${SECRET}" ] || { echo "runner-scaler: no machine secret" >&2; exit 1; }
# Read once, then deleted before any job runs (see linux.sh; fail closed).
aws secretsmanager delete-secret --secret-id "$${SECRET_ID}" --force-delete-without-recovery >/dev/null
field() { printf '%s' "$${SECRET}" | jq -r --arg k "$$1" '.[$$k] // empty'; }

TLS_CA_FILE=""
GITLAB_CA=$$(field gitlab_ca_bundle)
if [ -n "$${GITLAB_CA}" ]; then
  TLS_CA_FILE=/usr/local/etc/runner-scaler-gitlab.pem
  # Public, and read by the jobs' user (through CI_SERVER_TLS_CA_FILE): not umask 077's 0600 root.
  # /usr/local/etc is missing on Apple silicon images without an Intel Homebrew.
  ( umask 022 && mkdir -p /usr/local/etc && printf '%s\n' "$${GITLAB_CA}" > "$${TLS_CA_FILE}" )
  security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain "$${TLS_CA_FILE}"
fi

# Jobs run as JOB_USER: a standard user (not in admin, so no sudo) made here. Its packets to the metadata
# service are dropped by a pf rule in an anchor under com.apple/, which the stock /etc/pf.conf evaluates
# (pf.conf(5): `user` matches the owner of the socket); `pfctl -E` enables pf and keeps it enabled.
JOB_USER=runner-job
JOB_HOME="/Users/$${JOB_USER}"
if ! id -u "$${JOB_USER}" >/dev/null 2>&1; then
  sysadminctl -addUser "$${JOB_USER}" -home "$${JOB_HOME}" -shell /bin/bash -password "$$(openssl rand -hex 24)"
  createhomedir -c -u "$${JOB_USER}" >/dev/null
fi
printf 'block drop out quick proto { tcp, udp } from any to 169.254.169.254 user %s\n' "$${JOB_USER}" \
  | pfctl -a com.apple/runner-scaler -f -
pfctl -E
# run-single has no --user (gitlab-runner commands/single.go runs builds with an empty global config): its
# shell executor starts `bash` from PATH with the runner's own environment (shells/bash.go,
# executors/shell/shell.go). This shim, first on the runner's PATH, starts it as JOB_USER through sudo,
# whose env_reset drops the runner's environment and so CI_SERVER_TOKEN (sudoers(5)).
mkdir -p /usr/local/lib/runner-scaler
printf '#!/bin/sh\nexec /usr/bin/sudo -H -u %s /bin/bash "$$@"\n' "$${JOB_USER}" > /usr/local/lib/runner-scaler/bash
chmod 0755 /usr/local/lib/runner-scaler /usr/local/lib/runner-scaler/bash
export PATH="/usr/local/lib/runner-scaler:$${PATH}"

# macOS runs from a read-only system volume: nothing can be written under / (Apple, "About the read-only system
# volume in macOS Catalina or later", support.apple.com/en-us/101400). The shell executor puts builds and cache
# in `builds` and `cache` under run-single's working directory (gitlab-runner executors/shell/shell.go), which
# for user data is /; so both go under the job user's home (`--builds-dir`, `--cache-dir`: common/config.go).
RUNNER_TOKEN=$$(field runner_token)
set -- --url "$$(field gitlab_url)" --executor "$${EXECUTOR}" \
  --max-builds "$${MAX_BUILDS}" --wait-timeout "$${WAIT_TIMEOUT}" --description "runner-scaler/${pool}/$${INSTANCE_ID}" \
  --builds-dir "$${JOB_HOME}/builds" --cache-dir "$${JOB_HOME}/cache"
[ -n "$${TLS_CA_FILE}" ] && set -- "$$@" --tls-ca-file "$${TLS_CA_FILE}"
if [ -n "$${CACHE_BUCKET}" ]; then
  set -- "$$@" --cache-type s3 --cache-shared --cache-path "${cache_path}" --cache-s3-server-address s3.amazonaws.com \
    --cache-s3-bucket-name "$${CACHE_BUCKET}" --cache-s3-bucket-location "$${REGION}" --cache-s3-authentication_type iam
fi
unset SECRET
# The token rides in the runner's environment, never on argv (see linux.sh): only root reads it.
CI_SERVER_TOKEN="$${RUNNER_TOKEN}" gitlab-runner run-single "$$@" || true
unset RUNNER_TOKEN
# run-single has exited (jobs done, wait timeout, or an error): an idle machine without a listening runner
# must not count as capacity. It shuts itself down (terminate behaviour) and the scaler decrements its
# group (see linux.sh). The host stays allocated; the scaler decides when to release it.
# Host reuse (docs/windows-macos.md): a Mac that ran a job first waits up to REUSE_WAIT seconds. Meanwhile the
# scaler may replace its root volume (the instance reboots onto a fresh volume, this script with it) or
# terminate it; if neither comes (a lost scaler), it shuts down as before, so no paid Mac idles unseen. One that
# ran no job leaves at once (nothing to reuse, and it must not linger as capacity): a job's source is checked
# out under the builds directory (gitlab-runner docs/executors/shell.md), so no builds directory, no job.
if [ "$${REUSE_WAIT}" -gt 0 ] && [ -d "$${JOB_HOME}/builds" ]; then
  sleep "$${REUSE_WAIT}"
fi
shutdown -h now
