using Hull.Linux;
using Hull.Seccomp;

namespace Hull.Containers;

/// <summary>linux.seccomp compiled for the spawn shim, which loads it as the last step before exec.</summary>
public static class SeccompSupport
{
    public static (byte[] Program, uint Flags, SeccompProgram Compiled)? Compile(Hull.Oci.Seccomp? profile)
    {
        if (profile is null) return null;
        SeccompProgram p;
        try { p = SeccompCompiler.Compile(profile); }
        catch (SeccompException e) { throw new InvalidSpecException($"linux.seccomp: {e.Message}"); }
        return (ToBytes(p.Instructions), (uint)p.Flags, p);
    }

    /// <summary>
    /// The runtime's compile for create: from <paramref name="cache"/> when it holds this profile (then NeedsListener
    /// is false and no <see cref="SeccompProgram"/> is returned), else compiled and stored there.
    /// </summary>
    public static (byte[] Program, uint Flags, bool NeedsListener)? Compile(Hull.Oci.Seccomp? profile,
        SeccompCache? cache)
    {
        if (profile is null) return null;
        if (cache is null) return Compile(profile) is { } c0 ? (c0.Program, c0.Flags, c0.Compiled.NeedsListener) : null;
        var key = SeccompCache.KeyOf(profile);
        if (cache.TryGet(key) is { } hit) return (hit.Program, hit.Flags, false);
        var c = Compile(profile)!.Value;
        if (!c.Compiled.NeedsListener) cache.Put(key, c.Program, c.Flags);
        return (c.Program, c.Flags, c.Compiled.NeedsListener);
    }

    public static byte[] ToBytes(IReadOnlyList<SockFilter> instructions)
    {
        var bytes = new byte[instructions.Count * 8];
        for (var i = 0; i < instructions.Count; i++)
        {
            var ins = instructions[i];
            BitConverter.TryWriteBytes(bytes.AsSpan(i * 8), ins.Code);
            bytes[i * 8 + 2] = ins.Jt;
            bytes[i * 8 + 3] = ins.Jf;
            BitConverter.TryWriteBytes(bytes.AsSpan(i * 8 + 4), ins.K);
        }
        return bytes;
    }

    /// <summary>
    /// For a profile with SCMP_ACT_NOTIFY: loads the filter on the calling thread (the one that execs), and hands the
    /// notify fd to listenerPath. The filter is then active for the rest of the setup, so the profile must allow it.
    /// </summary>
    public static void LoadWithListener(SeccompProgram program, Hull.Oci.Seccomp profile, Hull.Oci.State state, int pid,
        SafeFd? connected = null)
    {
        if (string.IsNullOrEmpty(profile.ListenerPath))
            throw new InvalidSpecException("linux.seccomp uses SCMP_ACT_NOTIFY but has no listenerPath: give the " +
                "seccomp agent's socket");
        using var fd = SeccompLoader.Load(program)
            ?? throw new ContainerException("seccomp: the kernel gave no notify fd for a SCMP_ACT_NOTIFY filter");
        var st = SeccompListener.CreateState(state, pid, profile.ListenerMetadata);
        if (connected is not null) SeccompListener.Send(connected, profile.ListenerPath, fd, st);
        else SeccompListener.Send(profile.ListenerPath, fd, st);
    }

    /// <summary>
    /// The container init's connection to listenerPath, made while the host's filesystem is still visible (before
    /// pivot_root: the path names a socket outside the container), or null when the profile has no SCMP_ACT_NOTIFY
    /// rule. The state and the fd are sent on it later by <see cref="LoadWithListener"/>.
    /// </summary>
    public static SafeFd? ConnectListenerBeforePivot(Hull.Oci.Seccomp? profile)
    {
        if (profile?.Syscalls?.Any(s => s.Action == "SCMP_ACT_NOTIFY") != true) return null;
        if (string.IsNullOrEmpty(profile.ListenerPath))
            throw new InvalidSpecException("linux.seccomp uses SCMP_ACT_NOTIFY but has no listenerPath: give the " +
                "seccomp agent's socket");
        try { return SeccompListener.Connect(profile.ListenerPath); }
        catch (Exception e) when (e is LinuxException or SeccompException)
        {
            throw new ContainerException($"seccomp: {e.Message} — start the seccomp agent first, or fix " +
                "linux.seccomp.listenerPath");
        }
    }

    /// <summary>
    /// For a process started by exec under a profile with SCMP_ACT_NOTIFY: the socket pair over which the spawn shim
    /// hands back the notify fd before exec (<see cref="SpawnRequest.SeccompListener"/>); then call
    /// <see cref="HandOffExecListener"/>.
    /// </summary>
    public static (SafeFd ChildEnd, SafeFd ParentEnd) ExecListenerChannel(Hull.Oci.Seccomp profile)
    {
        if (string.IsNullOrEmpty(profile.ListenerPath))
            throw new InvalidSpecException("linux.seccomp uses SCMP_ACT_NOTIFY but has no listenerPath: give the " +
                "seccomp agent's socket");
        var (a, b) = Sys.SocketPair();
        return (a, b);
    }

    /// <summary>
    /// Between spawn and exec of an exec'd process, as runc does: waits until the child has loaded its filter and
    /// sent the notify fd (or has died: returns false, and the spawn's own error tells why), sends the fd with the
    /// container process state (pid = the exec'd process, state = the container's) to listenerPath, then lets the
    /// child go on to exec. If the hand-off fails the child is killed (it never runs the program) and this throws.
    /// </summary>
    public static unsafe bool HandOffExecListener(SafeFd parentEnd, SafeFd childPidfd, Hull.Oci.Seccomp profile,
        Hull.Oci.State state, int pid)
    {
        try
        {
            var p = stackalloc PollFd[2];
            while (true)
            {
                p[0] = new PollFd { Fd = parentEnd.Fd, Events = 1 /* POLLIN */ };
                p[1] = new PollFd { Fd = childPidfd.Fd, Events = 1 };
                if (Libc.poll(p, 2, -1) >= 0) break;
                var e = System.Runtime.InteropServices.Marshal.GetLastPInvokeError();
                if (e != Errors.EINTR) throw new LinuxException(e, "poll");
            }
            if ((p[0].REvents & 1) == 0) return false;     // the child exited before loading the filter
            SafeFd fd;
            try { fd = UnixSockets.ReceiveFd(parentEnd).Fd; }
            catch (LinuxException e) { throw new ContainerException(
                $"seccomp: the exec'd process did not hand over its notify fd ({e.Message})"); }
            using (fd)
            {
                try { SeccompListener.Send(profile.ListenerPath!, fd,
                    SeccompListener.CreateState(state, pid, profile.ListenerMetadata)); }
                catch (Exception e) when (e is LinuxException or SeccompException)
                {
                    throw new ContainerException($"seccomp: sending the notify fd of the exec'd process {pid} to the " +
                        $"listener {profile.ListenerPath}: {e.Message}");
                }
            }
            Sys.WriteAll(parentEnd, "1"u8, "seccomp listener go-ahead");
            return true;
        }
        catch
        {
            try { Sys.PidfdSendSignal(childPidfd, Signals.SIGKILL); } catch (LinuxException) { }
            throw;
        }
    }
}
