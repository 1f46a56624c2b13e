#!/bin/zsh
# runner-scaler machine boot (EC2 Mac). Rendered per pool by chalicelib/userdata.py; holds no secret.
# EC2 Mac runs user data through ec2-macos-init; gitlab-runner, jq and the AWS CLI come with the AMI.
set -eu
umask 077

PREFIX="${prefix}"
EXECUTOR="${executor}"
MAX_BUILDS="${max_builds}"
WAIT_TIMEOUT="${wait_timeout}"
CACHE_BUCKET="${cache_bucket}"

TOKEN=$$(curl -sS -X PUT "http://169.254.169.254/latest/api/token" -H "X-aws-ec2-metadata-token-ttl-seconds: 300")
INSTANCE_ID=$$(curl -sS -H "X-aws-ec2-metadata-token: $${TOKEN}" http://169.254.169.254/latest/meta-data/instance-id)
REGION=$$(curl -sS -H "X-aws-ec2-metadata-token: $${TOKEN}" http://169.254.169.254/latest/meta-data/placement/region)
export AWS_DEFAULT_REGION="$${REGION}"

SECRET=""
for _ in $$(seq 1 120); do
  if SECRET=$$(aws secretsmanager get-secret-value --secret-id "$${PREFIX}/machines/$${INSTANCE_ID}" \
      --query SecretString --output text 2>/dev/null); then
    break
  fi
  sleep 5
done
[ -n "$${SECRET}" ] || { echo "runner-scaler: no machine secret" >&2; exit 1; }
field() { printf '%s' "$${SECRET}" | jq -r --arg k "$$1" '.[$$k] // empty'; }

TLS_CA_FILE=""
GITLAB_CA=$$(field gitlab_ca_bundle)
if [ -n "$${GITLAB_CA}" ]; then
  TLS_CA_FILE=/usr/local/etc/runner-scaler-gitlab.pem
  # Public, and read by ec2-user (the runner, and its jobs through CI_SERVER_TLS_CA_FILE): not umask 077's
  # 0600 root. /usr/local/etc is missing on Apple silicon images without an Intel Homebrew.
  ( umask 022 && mkdir -p /usr/local/etc && printf '%s\n' "$${GITLAB_CA}" > "$${TLS_CA_FILE}" )
  security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain "$${TLS_CA_FILE}"
fi

# macOS runs from a read-only system volume: nothing can be written under / (Apple, "About the read-only system
# volume in macOS Catalina or later", support.apple.com/en-us/101400). The shell executor puts builds and cache
# in `builds` and `cache` under run-single's working directory (gitlab-runner executors/shell/shell.go), which
# for user data is /; so both go under the runner user's home (`--builds-dir`, `--cache-dir`: common/config.go).
RUNNER_HOME=/Users/ec2-user
set -- --url "$$(field gitlab_url)" --token "$$(field runner_token)" --executor "$${EXECUTOR}" \
  --max-builds "$${MAX_BUILDS}" --wait-timeout "$${WAIT_TIMEOUT}" --description "runner-scaler/${pool}/$${INSTANCE_ID}" \
  --builds-dir "$${RUNNER_HOME}/builds" --cache-dir "$${RUNNER_HOME}/cache"
[ -n "$${TLS_CA_FILE}" ] && set -- "$$@" --tls-ca-file "$${TLS_CA_FILE}"
if [ -n "$${CACHE_BUCKET}" ]; then
  set -- "$$@" --cache-type s3 --cache-shared --cache-s3-server-address s3.amazonaws.com \
    --cache-s3-bucket-name "$${CACHE_BUCKET}" --cache-s3-bucket-location "$${REGION}" --cache-s3-authentication_type iam
fi
unset SECRET
sudo -u ec2-user gitlab-runner run-single "$$@" || true
# run-single has exited (jobs done, wait timeout, or an error): an idle machine without a listening runner
# must not count as capacity. The host stays allocated; the scaler decides when to release it.
aws autoscaling terminate-instance-in-auto-scaling-group \
  --instance-id "$${INSTANCE_ID}" --should-decrement-desired-capacity || true
