namespace Hull.Linux;

/// <summary>System calls the guest agent needs (see also the other GuestSys.*.cs files).</summary>
public static unsafe partial class GuestSys
{
    public const uint LINUX_REBOOT_CMD_POWER_OFF = 0x4321FEDC, LINUX_REBOOT_CMD_RESTART = 0x01234567;

    public static void SyncAll() => Libc.syscall(SYS.sync, 0, 0, 0, 0, 0, 0);

    /// <summary>reboot(2) with the magic numbers; returns only on failure.</summary>
    public static void Reboot(uint cmd) =>
        Sys.Check(Libc.syscall(SYS.reboot, unchecked((int)0xfee1dead), 672274793, cmd, 0, 0, 0), "reboot");
}
