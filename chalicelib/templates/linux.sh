#!/bin/bash
# runner-scaler machine boot (Linux). Rendered per pool by chalicelib/userdata.py; never holds a secret:
# the runner token and TLS material are read at boot from this instance's own Secrets Manager secret.
set -euo pipefail
umask 077

PREFIX="${prefix}"
EXECUTOR="${executor}"
MAX_BUILDS="${max_builds}"
WAIT_TIMEOUT="${wait_timeout}"
DOCKER_IMAGE="${docker_image}"
CACHE_BUCKET="${cache_bucket}"

imds() {
  local token
  token=$$(curl -sS -X PUT "http://169.254.169.254/latest/api/token" -H "X-aws-ec2-metadata-token-ttl-seconds: 300")
  curl -sS -H "X-aws-ec2-metadata-token: $${token}" "http://169.254.169.254/latest/$${1}"
}

INSTANCE_ID=$$(imds meta-data/instance-id)
REGION=$$(imds meta-data/placement/region)
export AWS_DEFAULT_REGION="$${REGION}"

# The secret appears once the launch lifecycle hook has run; wait for it rather than fail the boot.
SECRET=""
for _ in $$(seq 1 60); do
  if SECRET=$$(aws secretsmanager get-secret-value --secret-id "$${PREFIX}/machines/$${INSTANCE_ID}" \
      --query SecretString --output text 2>/dev/null); then
    break
  fi
  sleep 5
done
if [ -z "$${SECRET}" ]; then
  echo "runner-scaler: no machine secret for $${INSTANCE_ID}; leaving it to the scaler's boot_timeout" >&2
  exit 1
fi
field() { printf '%s' "$${SECRET}" | jq -r --arg k "$$1" '.[$$k] // empty'; }

# Docker daemon with TLS on 2376: server certificate signed by the fleet CA, clients must present one.
install -d -m 0700 /etc/docker/certs
field ca_bundle > /etc/docker/certs/ca.pem
field server_cert > /etc/docker/certs/cert.pem
field server_key > /etc/docker/certs/key.pem
chmod 0600 /etc/docker/certs/key.pem
cat > /etc/docker/daemon.json <<JSON
{"tlsverify": true, "tlscacert": "/etc/docker/certs/ca.pem", "tlscert": "/etc/docker/certs/cert.pem",
 "tlskey": "/etc/docker/certs/key.pem", "hosts": ["unix:///var/run/docker.sock", "tcp://0.0.0.0:2376"]}
JSON
install -d /etc/systemd/system/docker.service.d
printf '[Service]\nExecStart=\nExecStart=/usr/bin/dockerd\n' > /etc/systemd/system/docker.service.d/hosts.conf
systemctl daemon-reload
systemctl restart docker

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
  CACHE_ARGS=(--cache-type s3 --cache-shared --cache-s3-server-address s3.amazonaws.com
              --cache-s3-bucket-name "$${CACHE_BUCKET}" --cache-s3-bucket-location "$${REGION}"
              --cache-s3-authentication_type iam)
fi

RUNNER_TOKEN=$$(field runner_token)
GITLAB_URL=$$(field gitlab_url)
unset SECRET
gitlab-runner run-single --url "$${GITLAB_URL}" --token "$${RUNNER_TOKEN}" --executor "$${EXECUTOR}" \
  --docker-image "$${DOCKER_IMAGE}" --max-builds "$${MAX_BUILDS}" --wait-timeout "$${WAIT_TIMEOUT}" \
  --description "runner-scaler/${pool}/$${INSTANCE_ID}" \
  "$${TLS_CA_ARGS[@]}" "$${CACHE_ARGS[@]}" || true
# run-single has exited: --max-builds jobs done, --wait-timeout passed without a job, or a runner error.
# No job runs here any more, and an idle machine whose runner stopped listening must not count as
# capacity: leave now, decrementing the group so it does not replace this machine by itself.
aws autoscaling terminate-instance-in-auto-scaling-group \
  --instance-id "$${INSTANCE_ID}" --should-decrement-desired-capacity || true
