<powershell>
# runner-scaler machine boot (Windows). Rendered per pool by chalicelib/userdata.py; holds no secret.
# gitlab-runner.exe, the AWS Tools for PowerShell (AWS.Tools.SecretsManager) and Docker come with the AMI.
$$ErrorActionPreference = "Stop"
$$Prefix = "${prefix}"
$$Executor = "${executor}"
$$MaxBuilds = "${max_builds}"
$$WaitTimeout = "${wait_timeout}"
$$CacheBucket = "${cache_bucket}"
# [pools.docker] as gitlab-runner flags (its common/config.go DockerConfig), and the Docker daemon's mirrors.
$$DockerArgs = @(${docker_args})
$$ServicesPrivileged = "${services_privileged_env}"
$$RegistryMirrors = ${registry_mirrors} | ConvertFrom-Json

$$Token = Invoke-RestMethod -Method Put -Uri "http://169.254.169.254/latest/api/token" `
  -Headers @{ "X-aws-ec2-metadata-token-ttl-seconds" = "300" }
$$Headers = @{ "X-aws-ec2-metadata-token" = $$Token }
$$InstanceId = Invoke-RestMethod -Headers $$Headers -Uri "http://169.254.169.254/latest/meta-data/instance-id"
$$Region = Invoke-RestMethod -Headers $$Headers -Uri "http://169.254.169.254/latest/meta-data/placement/region"

$$Secret = $$null
foreach ($$attempt in 1..120) {
  try {
    $$Secret = (Get-SECSecretValue -SecretId "$$Prefix/machines/$$InstanceId" -Region $$Region).SecretString |
      ConvertFrom-Json
    break
  } catch { Start-Sleep -Seconds 5 }
}
if (-not $$Secret) { Write-Error "runner-scaler: no machine secret for $$InstanceId"; exit 1 }

# Docker engine with TLS on 2376, server certificate from the fleet CA.
$$CertDir = "C:\ProgramData\docker\certs.d"
New-Item -ItemType Directory -Force -Path $$CertDir | Out-Null
Set-Content -Path "$$CertDir\ca.pem" -Value $$Secret.ca_bundle
Set-Content -Path "$$CertDir\cert.pem" -Value $$Secret.server_cert
Set-Content -Path "$$CertDir\key.pem" -Value $$Secret.server_key
icacls "$$CertDir\key.pem" /inheritance:r /grant:r "SYSTEM:R" "Administrators:R" | Out-Null
# Merge our keys into daemon.json, never replace it: what the AMI baked in (a registry mirror) survives.
$$DaemonFile = "C:\ProgramData\docker\config\daemon.json"
$$Daemon = if (Test-Path $$DaemonFile) { Get-Content -Raw $$DaemonFile | ConvertFrom-Json } else { [pscustomobject]@{} }
$$Ours = @{ tlsverify = $$true; tlscacert = "$$CertDir\ca.pem"; tlscert = "$$CertDir\cert.pem";
  tlskey = "$$CertDir\key.pem"; hosts = @("npipe://", "tcp://0.0.0.0:2376") }
foreach ($$Key in $$Ours.Keys) { $$Daemon | Add-Member -NotePropertyName $$Key -NotePropertyValue $$Ours[$$Key] -Force }
$$Mirrors = @($$Daemon."registry-mirrors") + @($$RegistryMirrors) | Where-Object { $$_ } | Select-Object -Unique
if ($$Mirrors) { $$Daemon | Add-Member -NotePropertyName "registry-mirrors" -NotePropertyValue @($$Mirrors) -Force }
New-Item -ItemType Directory -Force -Path (Split-Path $$DaemonFile) | Out-Null
$$Daemon | ConvertTo-Json -Depth 10 | Set-Content -Path $$DaemonFile
Restart-Service docker

$$RunnerArgs = @("run-single", "--url", $$Secret.gitlab_url, "--token", $$Secret.runner_token,
  "--executor", $$Executor, "--max-builds", $$MaxBuilds, "--wait-timeout", $$WaitTimeout,
  "--description", "runner-scaler/${pool}/$$InstanceId") + $$DockerArgs
# services_privileged = false has no flag spelling: its env tag (DOCKER_SERVICES_PRIVILEGED) carries it.
if ($$ServicesPrivileged) { $$env:DOCKER_SERVICES_PRIVILEGED = $$ServicesPrivileged }
if ($$Secret.gitlab_ca_bundle) {
  $$CaFile = "C:\ProgramData\runner-scaler\gitlab-ca.pem"
  New-Item -ItemType Directory -Force -Path (Split-Path $$CaFile) | Out-Null
  Set-Content -Path $$CaFile -Value $$Secret.gitlab_ca_bundle
  Import-Certificate -FilePath $$CaFile -CertStoreLocation Cert:\LocalMachine\Root | Out-Null
  $$RunnerArgs += @("--tls-ca-file", $$CaFile)
}
if ($$CacheBucket) {
  $$RunnerArgs += @("--cache-type", "s3", "--cache-shared", "--cache-s3-server-address", "s3.amazonaws.com",
    "--cache-s3-bucket-name", $$CacheBucket, "--cache-s3-bucket-location", $$Region,
    "--cache-s3-authentication_type", "iam")
}

$$Secret = $$null
& "C:\GitLab-Runner\gitlab-runner.exe" @RunnerArgs
# run-single has exited (jobs done, wait timeout, or an error): an idle machine without a listening runner
# must not count as capacity. Leave now, decrementing the group so it does not replace this machine.
Stop-ASInstanceInAutoScalingGroup -InstanceId $$InstanceId -ShouldDecrementDesiredCapacity $$true -Region $$Region -Force
</powershell>
