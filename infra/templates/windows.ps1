<powershell>
# runner-scaler machine boot (Windows). Rendered per pool by infra/userdata.py; holds no secret.
# gitlab-runner.exe, the AWS Tools for PowerShell (AWS.Tools.SecretsManager) and Docker come with the AMI.
# The machine secret is read once and deleted; shell jobs run as a standard (non-admin) user whose packets
# to the instance metadata service the Windows firewall blocks (docs/security.md).
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
$$DockerTcpTls = "${docker_tcp_tls}"

$$Token = Invoke-RestMethod -Method Put -Uri "http://169.254.169.254/latest/api/token" `
  -Headers @{ "X-aws-ec2-metadata-token-ttl-seconds" = "300" }
$$Headers = @{ "X-aws-ec2-metadata-token" = $$Token }
$$InstanceId = Invoke-RestMethod -Headers $$Headers -Uri "http://169.254.169.254/latest/meta-data/instance-id"
$$Region = Invoke-RestMethod -Headers $$Headers -Uri "http://169.254.169.254/latest/meta-data/placement/region"

if ("${warm_pool}" -eq "true") {
  # A warm-pool machine boots once in the pool, is stopped, and started again when it leaves it: the
  # <persist>true</persist> tag below runs this user data at every start ("Run commands on your Windows
  # instance at launch"). While its target lifecycle state is Warmed:* ("Retrieve the target lifecycle state
  # through instance metadata") it holds no token and starts no runner: it waits until it is stopped, or,
  # hibernated, until it is resumed into service. A fresh metadata token each time: one may outlive its TTL.
  while ($$true) {
    try {
      $$Fresh = Invoke-RestMethod -Method Put -Uri "http://169.254.169.254/latest/api/token" `
        -Headers @{ "X-aws-ec2-metadata-token-ttl-seconds" = "300" }
      $$Target = Invoke-RestMethod -Headers @{ "X-aws-ec2-metadata-token" = $$Fresh } `
        -Uri "http://169.254.169.254/latest/meta-data/autoscaling/target-lifecycle-state"
    } catch { $$Target = "" }
    if (-not "$$Target".StartsWith("Warmed:")) { break }
    Start-Sleep -Seconds ${secret_poll}
  }
}

$$SecretId = "$$Prefix/machines/$$InstanceId"
$$Secret = $$null
foreach ($$attempt in 1..${secret_tries}) {
  try {
    $$Secret = (Get-SECSecretValue -SecretId $$SecretId -Region $$Region).SecretString | ConvertFrom-Json
    break
  } catch { Start-Sleep -Seconds ${secret_poll} }
}
if (-not $$Secret) { Write-Error "runner-scaler: no machine secret for $$InstanceId"; exit 1 }
# Read once, then deleted before any job runs (Remove-SECSecret is DeleteSecret; -DeleteWithNoRecovery is
# ForceDeleteWithoutRecovery). Fail closed: $$ErrorActionPreference stops the boot if it cannot be deleted.
Remove-SECSecret -SecretId $$SecretId -DeleteWithNoRecovery $$true -Region $$Region -Force | Out-Null

# Only with docker_tcp_tls: Docker also on 2376 with TLS, server certificate from the fleet CA. Nothing in
# runner-scaler connects there (run-single talks to the local named pipe).
$$CertDir = "C:\ProgramData\docker\certs.d"
if ($$DockerTcpTls -eq "true") {
  New-Item -ItemType Directory -Force -Path $$CertDir | Out-Null
  Set-Content -Path "$$CertDir\ca.pem" -Value $$Secret.ca_bundle
  Set-Content -Path "$$CertDir\cert.pem" -Value $$Secret.server_cert
  Set-Content -Path "$$CertDir\key.pem" -Value $$Secret.server_key
  icacls "$$CertDir\key.pem" /inheritance:r /grant:r "SYSTEM:R" "Administrators:R" | Out-Null
}
# Merge our keys into daemon.json, never replace it: what the AMI baked in (a registry mirror) survives.
$$DaemonFile = "C:\ProgramData\docker\config\daemon.json"
$$Daemon = if (Test-Path $$DaemonFile) { Get-Content -Raw $$DaemonFile | ConvertFrom-Json } else { [pscustomobject]@{} }
$$Ours = @{}
if ($$DockerTcpTls -eq "true") {
  $$Ours = @{ tlsverify = $$true; tlscacert = "$$CertDir\ca.pem"; tlscert = "$$CertDir\cert.pem";
    tlskey = "$$CertDir\key.pem"; hosts = @("npipe://", "tcp://0.0.0.0:2376") }
}
foreach ($$Key in $$Ours.Keys) { $$Daemon | Add-Member -NotePropertyName $$Key -NotePropertyValue $$Ours[$$Key] -Force }
$$Mirrors = @($$Daemon."registry-mirrors") + @($$RegistryMirrors) | Where-Object { $$_ } | Select-Object -Unique
if ($$Mirrors) { $$Daemon | Add-Member -NotePropertyName "registry-mirrors" -NotePropertyValue @($$Mirrors) -Force }
New-Item -ItemType Directory -Force -Path (Split-Path $$DaemonFile) | Out-Null
$$Daemon | ConvertTo-Json -Depth 10 | Set-Content -Path $$DaemonFile
Restart-Service docker

# The token never rides on argv (any local process can read a command line): run-single reads it from
# CI_SERVER_TOKEN (gitlab-runner common/config.go, RunnerCredentials.Token).
$$RunnerToken = $$Secret.runner_token
# --shell powershell: on Windows gitlab-runner's default shell is pwsh (shells/powershell.go, IsDefault), which
# stock Windows Server AMIs lack; Windows PowerShell 5.1 ships with every one (flag: common/config.go, Shell).
$$RunnerArgs = @("run-single", "--url", $$Secret.gitlab_url,
  "--executor", $$Executor, "--shell", "powershell", "--max-builds", $$MaxBuilds, "--wait-timeout", $$WaitTimeout,
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
  $$RunnerArgs += @("--cache-type", "s3", "--cache-shared", "--cache-path", "${cache_path}",
    "--cache-s3-server-address", "s3.amazonaws.com",
    "--cache-s3-bucket-name", $$CacheBucket, "--cache-s3-bucket-location", $$Region,
    "--cache-s3-authentication_type", "iam")
}

$$Secret = $$null
$$RunnerExe = "C:\GitLab-Runner\gitlab-runner.exe"
if ($$Executor -eq "shell") {
  # gitlab-runner switches the shell executor's user only under `gitlab-runner run`, and only for Bash
  # (gitlab-runner docs/executors/shell.md; run-single builds with an empty global config: commands/single.go):
  # on Windows a shell job runs as its runner's user. So the runner runs as JobUser, a standard local user
  # (not in Administrators), from a scheduled task that holds the user's random password.
  $$JobUser = "runner-job"
  $$Bytes = New-Object byte[] 32
  [System.Security.Cryptography.RandomNumberGenerator]::Create().GetBytes($$Bytes)
  $$Password = [Convert]::ToBase64String($$Bytes)
  $$Secure = ConvertTo-SecureString $$Password -AsPlainText -Force
  New-LocalUser -Name $$JobUser -Password $$Secure -PasswordNeverExpires -AccountNeverExpires | Out-Null
  Add-LocalGroupMember -Group "Users" -Member $$JobUser
  $$Sid = (Get-LocalUser -Name $$JobUser).SID.Value
  # JobUser's packets to the metadata service are blocked (New-NetFirewallRule -LocalUser takes an SDDL of
  # the users a rule applies to), so neither its jobs nor its runner reach the instance role.
  New-NetFirewallRule -Name "runner-scaler-no-metadata" -DisplayName "runner-scaler: jobs never reach IMDS" `
    -Direction Outbound -Action Block -RemoteAddress 169.254.169.254 -LocalUser "D:(A;;CC;;;$$Sid)" | Out-Null
  $$WorkDir = "C:\runner-job"
  New-Item -ItemType Directory -Force -Path $$WorkDir | Out-Null
  icacls $$WorkDir /grant "$${JobUser}:(OI)(CI)M" | Out-Null
  $$RunnerArgs += @("--builds-dir", "$$WorkDir\builds", "--cache-dir", "$$WorkDir\cache")
  # The launcher (run as JobUser) takes the token from a file only JobUser and SYSTEM can open, deletes it,
  # and hands it to gitlab-runner in CI_SERVER_TOKEN. Arguments go as JSON: they hold no secret.
  $$StateDir = "C:\ProgramData\runner-scaler"
  New-Item -ItemType Directory -Force -Path $$StateDir | Out-Null
  $$TokenFile = "$$StateDir\runner-token"
  Set-Content -Path $$TokenFile -Value $$RunnerToken -NoNewline
  icacls $$TokenFile /inheritance:r /grant:r "SYSTEM:F" "$${JobUser}:(R,D)" | Out-Null
  ConvertTo-Json -InputObject $$RunnerArgs | Set-Content -Path "$$StateDir\runner-args.json"
  $$Launcher = @'
$$ErrorActionPreference = "Stop"
$$env:CI_SERVER_TOKEN = Get-Content -Raw -Path "C:\ProgramData\runner-scaler\runner-token"
Remove-Item -Force -Path "C:\ProgramData\runner-scaler\runner-token"
$$RunnerArgs = Get-Content -Raw -Path "C:\ProgramData\runner-scaler\runner-args.json" | ConvertFrom-Json
& "C:\GitLab-Runner\gitlab-runner.exe" @RunnerArgs
'@
  Set-Content -Path "$$StateDir\runner.ps1" -Value $$Launcher
  $$Action = New-ScheduledTaskAction -Execute "powershell.exe" `
    -Argument "-NoProfile -NonInteractive -ExecutionPolicy Bypass -File $$StateDir\runner.ps1"
  $$Settings = New-ScheduledTaskSettingsSet -ExecutionTimeLimit ([TimeSpan]::Zero)
  Register-ScheduledTask -TaskName "runner-scaler" -Action $$Action -Settings $$Settings -User $$JobUser `
    -Password $$Password -RunLevel Limited | Out-Null
  $$Password = $$null
  Start-ScheduledTask -TaskName "runner-scaler"
  foreach ($$second in 1..60) {
    if ((Get-ScheduledTask -TaskName "runner-scaler").State -eq "Running") { break }
    Start-Sleep -Seconds 1
  }
  while ((Get-ScheduledTask -TaskName "runner-scaler").State -eq "Running") { Start-Sleep -Seconds 10 }
} else {
  # Container jobs: the runner stays SYSTEM (it drives Docker); the token lives in its environment only.
  $$env:CI_SERVER_TOKEN = $$RunnerToken
  & $$RunnerExe @RunnerArgs
  Remove-Item Env:\CI_SERVER_TOKEN
}
$$RunnerToken = $$null
# run-single has exited (jobs done, wait timeout, or an error): an idle machine without a listening runner
# must not count as capacity. It shuts itself down (terminate behaviour) and the scaler decrements its
# group (see linux.sh): the machine holds no right to end an instance.
Stop-Computer -Force
</powershell>${persist}
