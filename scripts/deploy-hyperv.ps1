<#
.SYNOPSIS
    Creates canary VMs (Hyper-V Generation 2) from the VHDX that scripts/build-image makes.

.DESCRIPTION
    For each of -Count VMs named <NamePrefix>-01, <NamePrefix>-02, ... this script:
      1. copies the canary VHDX to <VhdDirectory>\<name>.vhdx (each VM gets its own disk);
      2. with -CollectorAddress, rewrites \canary.cfg on the copy's EFI system partition
         (mounts the copy, gives the ESP a temporary drive letter, writes the file, dismounts);
      3. creates the VM: New-VM -Generation 2, static memory, -ProcessorCount, the synthetic
         network adapter on -SwitchName, the copied disk as the first boot device;
      4. turns Secure Boot off: the canary's EFI binary is not signed. (The
         "MicrosoftUEFICertificateAuthority" template only admits binaries signed through
         Microsoft's third-party UEFI CA, such as shim; an unsigned canary does not boot with
         Secure Boot on under either template.)
      5. connects COM1 to the named pipe \\.\pipe\<name>-com1, where the canary writes its
         console (read it with e.g. PuTTY "Serial" on that pipe path, or the script in
         docs/deploy.md);
      6. turns automatic checkpoints off and sets the automatic stop action to TurnOff (a
         canary keeps no state worth saving);
      7. with -Start, starts the VM.
    Supports -WhatIf and -Confirm: with -WhatIf nothing is copied, created or changed.
    Needs the Hyper-V PowerShell module and an elevated session (Hyper-V Administrators).

    The canary reads its options from \canary.cfg on its EFI system partition. Build the image
    with the right defaults (scripts/build-image --collector 192.168.100.1:7373 --ip dhcp), or
    pass -CollectorAddress (and -CanaryIp) here to write them per deployment.

    See docs/deploy.md for the field check: what the VM's screen, COM1, the Hyper-V-Worker
    event log (event 18590) and `host-collector list` show when a canary panics.

.PARAMETER VhdxPath
    The canary VHDX (canary-x86_64.vhdx on x64 hosts, canary-aarch64.vhdx on arm64 hosts).

.PARAMETER SwitchName
    The Hyper-V virtual switch for the canary's synthetic NIC; the collector must be reachable
    from it over UDP.

.PARAMETER NamePrefix
    VM names are <NamePrefix>-01, -02, ...  Default "canary".

.PARAMETER Count
    How many VMs to create (1-999). Default 1.

.PARAMETER CollectorAddress
    The collector's IPv4:PORT (for example 192.168.100.1:7373). When given, each VM's copy of
    \canary.cfg is rewritten with it; when omitted, the image's own config stays.

.PARAMETER CanaryIp
    With -CollectorAddress: the canary's address, "dhcp" (default) or A.B.C.D/N. With -Count
    above 1 and a static address, the last octet is incremented per VM.

.PARAMETER ExtraOptions
    With -CollectorAddress: more canary options for \canary.cfg, e.g. "panic_action=reset".

.PARAMETER MemoryMB
    Static memory per VM in MB. Default 256 (the canary uses far less; Gen2 needs 32 or more).

.PARAMETER ProcessorCount
    Virtual processors per VM. Default 1.

.PARAMETER VhdDirectory
    Where the per-VM disks go. Default: the host's VirtualHardDiskPath.

.PARAMETER Start
    Start the VMs after creating them.

.EXAMPLE
    .\deploy-hyperv.ps1 -VhdxPath .\canary-x86_64.vhdx -SwitchName canary-net -Count 3 -WhatIf

    Shows what would be created, changes nothing.

.EXAMPLE
    .\deploy-hyperv.ps1 -VhdxPath .\canary-x86_64.vhdx -SwitchName canary-net `
        -CollectorAddress 192.168.100.1:7373 -Count 2 -Start

    Creates and starts canary-01 and canary-02, sending crash records to 192.168.100.1:7373.

.PARAMETER InstallCollector
    Instead of creating VMs: installs host-collector.exe (given as -CollectorExe) on this host
    to start at boot and restart when it exits (see Install-CollectorTask below), with an
    inbound UDP firewall rule for -CollectorListen. Untested on Windows: written and
    reviewed, never run (docs/deploy.md, "Platforms").

.PARAMETER CollectorExe
    With -InstallCollector: host-collector.exe (scripts/test-windows builds it:
    target\x86_64-pc-windows-gnu\debug\host-collector.exe, or cargo build --release --target
    x86_64-pc-windows-gnu).

.PARAMETER CollectorListen
    With -InstallCollector: the collector's UDP IPv4:PORT, the host's address on the canaries'
    switch (the canaries' -CollectorAddress). Default 0.0.0.0:7373.

.PARAMETER CollectorDb
    With -InstallCollector: the database. Default C:\ProgramData\canary\collector.db.

.PARAMETER CollectorKeyFile
    With -InstallCollector: the fleet key file (serve --key-file), if the fleet uses one.

.EXAMPLE
    .\deploy-hyperv.ps1 -InstallCollector -CollectorExe .\host-collector.exe `
        -CollectorListen 192.168.100.1:7373

    Registers and starts the "host-collector" task; check it with
    host-collector.exe --db C:\ProgramData\canary\collector.db list

.NOTES
    Exit: throws (non-zero exit from powershell.exe -File) on the first error; VMs already
    created stay (remove them with Remove-VM, and their disks by hand).
#>
[CmdletBinding(SupportsShouldProcess = $true, ConfirmImpact = 'Medium',
    DefaultParameterSetName = 'Vms')]
param(
    [Parameter(Mandatory = $true, ParameterSetName = 'Vms')]
    [ValidateScript({ Test-Path -LiteralPath $_ -PathType Leaf })]
    [string] $VhdxPath,

    [Parameter(Mandatory = $true, ParameterSetName = 'Vms')]
    [ValidateNotNullOrEmpty()]
    [string] $SwitchName,

    [ValidatePattern('^[A-Za-z0-9][A-Za-z0-9_.-]{0,50}$')]
    [string] $NamePrefix = 'canary',

    [ValidateRange(1, 999)]
    [int] $Count = 1,

    [ValidatePattern('^(\d{1,3}\.){3}\d{1,3}:\d{1,5}$')]
    [string] $CollectorAddress,

    [ValidatePattern('^(dhcp|(\d{1,3}\.){3}\d{1,3}/\d{1,2})$')]
    [string] $CanaryIp = 'dhcp',

    [string] $ExtraOptions = '',

    [ValidateRange(32, 65536)]
    [int] $MemoryMB = 256,

    [ValidateRange(1, 64)]
    [int] $ProcessorCount = 1,

    [string] $VhdDirectory,

    [switch] $Start,

    [Parameter(Mandatory = $true, ParameterSetName = 'Collector')]
    [switch] $InstallCollector,

    [Parameter(Mandatory = $true, ParameterSetName = 'Collector')]
    [ValidateScript({ Test-Path -LiteralPath $_ -PathType Leaf })]
    [string] $CollectorExe,

    [Parameter(ParameterSetName = 'Collector')]
    [ValidatePattern('^(\d{1,3}\.){3}\d{1,3}:\d{1,5}$')]
    [string] $CollectorListen = '0.0.0.0:7373',

    [Parameter(ParameterSetName = 'Collector')]
    [string] $CollectorDb = (Join-Path $env:ProgramData 'canary\collector.db'),

    [Parameter(ParameterSetName = 'Collector')]
    [string] $CollectorKeyFile
)

Set-StrictMode -Version 3.0
$ErrorActionPreference = 'Stop'

# The EFI system partition type (UEFI spec, "GPT Partition Entry - Partition Type GUIDs").
$EspGptType = '{c12a7328-f81f-11d2-ba4b-00a0c93ec93b}'

function Get-CanaryIp {
    param([string] $Base, [int] $Index)
    if ($Base -eq 'dhcp') { return 'dhcp' }
    $addr, $prefix = $Base.Split('/')
    $o = [int[]] $addr.Split('.')
    $last = $o[3] + $Index
    if ($last -gt 254) {
        throw "CanaryIp $Base + $Index runs past .254: use a lower start address or fewer VMs"
    }
    return ('{0}.{1}.{2}.{3}/{4}' -f $o[0], $o[1], $o[2], $last, $prefix)
}

function Set-CanaryConfig {
    # Writes \canary.cfg on the ESP of a (not attached) VHDX.
    param([string] $Path, [string] $Text)
    $disk = Mount-VHD -Path $Path -Passthru | Get-Disk
    try {
        $esp = Get-Partition -DiskNumber $disk.Number |
            Where-Object { $_.GptType -eq $EspGptType } | Select-Object -First 1
        if ($null -eq $esp) { throw "$Path has no EFI system partition: is it a canary image?" }
        $esp | Add-PartitionAccessPath -AssignDriveLetter
        $esp = Get-Partition -DiskNumber $disk.Number -PartitionNumber $esp.PartitionNumber
        if (-not [char]::IsLetter($esp.DriveLetter)) {
            throw "could not give the ESP of $Path a drive letter"
        }
        $cfg = '{0}:\canary.cfg' -f $esp.DriveLetter
        # ASCII, LF line ends: the canary reads key=value words, '#' starts a comment.
        [System.IO.File]::WriteAllText($cfg, $Text.Replace("`r`n", "`n"),
            [System.Text.Encoding]::ASCII)
        $esp | Remove-PartitionAccessPath -AccessPath ('{0}:\' -f $esp.DriveLetter)
    }
    finally {
        Dismount-VHD -Path $Path
    }
}

# ---- -InstallCollector: the collector on this host (separate from the VM creation below) ----

# Runs `host-collector.exe serve` at boot as SYSTEM, restarted a minute after it exits, as a
# scheduled task rather than a service: host-collector.exe is a console program that does
# not speak the Service Control Manager's protocol (StartServiceCtrlDispatcher), so the SCM
# would stop it after 30 s as "did not respond" (error 1053) if New-Service registered it.
# Stopping the task ends the process without notice; the collector acks only committed
# records, so nothing acked is lost (tests/fault_kill9.rs, tests/portable.rs).
function Install-CollectorTask {
    [CmdletBinding(SupportsShouldProcess = $true)]
    param([string] $Exe, [string] $Listen, [string] $Db, [string] $KeyFile)
    $exePath = (Resolve-Path -LiteralPath $Exe).Path
    $port = [int] $Listen.Split(':')[1]
    if ($port -lt 1 -or $port -gt 65535) { throw "CollectorListen port $port is out of range" }
    $dbDir = Split-Path -Parent $Db
    $arguments = "--db `"$Db`" serve --listen $Listen"
    if ($KeyFile) {
        $arguments += " --key-file `"$((Resolve-Path -LiteralPath $KeyFile).Path)`""
    }
    if (-not $PSCmdlet.ShouldProcess('host-collector',
            "Register a boot-time task running '$exePath $arguments' as SYSTEM, allow UDP $port in")) {
        return
    }
    if (-not (Test-Path -LiteralPath $dbDir -PathType Container)) {
        New-Item -ItemType Directory -Path $dbDir | Out-Null
    }
    $action = New-ScheduledTaskAction -Execute $exePath -Argument $arguments -WorkingDirectory $dbDir
    $trigger = New-ScheduledTaskTrigger -AtStartup
    $principal = New-ScheduledTaskPrincipal -UserId 'SYSTEM' -LogonType ServiceAccount -RunLevel Highest
    $settings = New-ScheduledTaskSettingsSet -ExecutionTimeLimit ([TimeSpan]::Zero) `
        -RestartCount 9999 -RestartInterval (New-TimeSpan -Minutes 1) -StartWhenAvailable `
        -AllowStartIfOnBatteries -DontStopIfGoingOnBatteries
    Register-ScheduledTask -TaskName 'host-collector' -Action $action -Trigger $trigger `
        -Principal $principal -Settings $settings -Force | Out-Null
    if (-not (Get-NetFirewallRule -Name 'canary-host-collector-udp' -ErrorAction SilentlyContinue)) {
        New-NetFirewallRule -Name 'canary-host-collector-udp' `
            -DisplayName 'canary host-collector (crash records, UDP)' -Direction Inbound `
            -Protocol UDP -LocalPort $port -Program $exePath -Action Allow | Out-Null
    }
    Start-ScheduledTask -TaskName 'host-collector'
    [pscustomobject]@{
        Task     = 'host-collector'
        State    = (Get-ScheduledTask -TaskName 'host-collector').State
        Listen   = $Listen
        Database = $Db
    }
}

if ($PSCmdlet.ParameterSetName -eq 'Collector') {
    Install-CollectorTask -Exe $CollectorExe -Listen $CollectorListen -Db $CollectorDb `
        -KeyFile $CollectorKeyFile
    return
}

# ---- VM creation ----

if (-not (Get-Module -ListAvailable -Name Hyper-V)) {
    throw 'the Hyper-V PowerShell module is not installed (Install-WindowsFeature Hyper-V-PowerShell, or enable Microsoft-Hyper-V-Management-PowerShell)'
}
if (-not (Get-VMSwitch -Name $SwitchName -ErrorAction SilentlyContinue)) {
    $known = (Get-VMSwitch | ForEach-Object { $_.Name }) -join ', '
    throw "no virtual switch named '$SwitchName' (this host has: $known)"
}
if ($CollectorAddress) {
    $port = [int] $CollectorAddress.Split(':')[1]
    if ($port -lt 1 -or $port -gt 65535) { throw "CollectorAddress port $port is out of range" }
}
if (-not $VhdDirectory) { $VhdDirectory = (Get-VMHost).VirtualHardDiskPath }
if (-not (Test-Path -LiteralPath $VhdDirectory -PathType Container)) {
    if ($PSCmdlet.ShouldProcess($VhdDirectory, 'Create directory')) {
        New-Item -ItemType Directory -Path $VhdDirectory | Out-Null
    }
}
$source = (Resolve-Path -LiteralPath $VhdxPath).Path

$created = @()
for ($i = 1; $i -le $Count; $i++) {
    $name = '{0}-{1:D2}' -f $NamePrefix, $i
    $disk = Join-Path $VhdDirectory "$name.vhdx"
    $pipe = "\\.\pipe\$name-com1"
    if (Get-VM -Name $name -ErrorAction SilentlyContinue) {
        throw "a VM named '$name' already exists: remove it or choose another -NamePrefix"
    }
    if (Test-Path -LiteralPath $disk) {
        throw "$disk already exists: remove it or choose another -NamePrefix/-VhdDirectory"
    }
    if (-not $PSCmdlet.ShouldProcess($name,
            "Create Gen2 VM ($MemoryMB MB, $ProcessorCount vCPU, switch '$SwitchName', disk $disk, COM1 $pipe, Secure Boot off)")) {
        continue
    }

    Copy-Item -LiteralPath $source -Destination $disk
    if ($CollectorAddress) {
        $ip = Get-CanaryIp -Base $CanaryIp -Index ($i - 1)
        $lines = @(
            "# canary options, written by deploy-hyperv.ps1 for $name",
            "collector=$CollectorAddress",
            "ip=$ip"
        )
        if ($ExtraOptions) { $lines += $ExtraOptions }
        Set-CanaryConfig -Path $disk -Text (($lines -join "`n") + "`n")
    }

    $memoryBytes = [int64]$MemoryMB * 1048576
    $vm = New-VM -Name $name -Generation 2 -MemoryStartupBytes $memoryBytes `
        -VHDPath $disk -SwitchName $SwitchName
    Set-VM -VM $vm -StaticMemory -ProcessorCount $ProcessorCount -AutomaticStopAction TurnOff
    # Automatic checkpoints exist from Windows Server 2019 / Windows 10 1709 on.
    if ((Get-Command Set-VM).Parameters.ContainsKey('AutomaticCheckpointsEnabled')) {
        Set-VM -VM $vm -AutomaticCheckpointsEnabled $false
    }
    $hdd = Get-VMHardDiskDrive -VM $vm | Select-Object -First 1
    Set-VMFirmware -VM $vm -EnableSecureBoot Off -FirstBootDevice $hdd
    Set-VMComPort -VM $vm -Number 1 -Path $pipe
    $created += $vm
    Write-Verbose "created $name (disk $disk, COM1 $pipe)"
    if ($Start) { Start-VM -VM $vm }
}

$created | ForEach-Object {
    [pscustomobject]@{
        Name   = $_.Name
        State  = (Get-VM -Id $_.Id).State
        Switch = $SwitchName
        Com1   = "\\.\pipe\$($_.Name)-com1"
    }
}
