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
    public static (byte[] Program, uint Flags, bool NeedsListener)? Compile(Hull.Oci.Seccomp? profile, SeccompCache? cache)
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
    public static void LoadWithListener(SeccompProgram program, Hull.Oci.Seccomp profile, Hull.Oci.State state, int pid)
    {
        if (string.IsNullOrEmpty(profile.ListenerPath))
            throw new InvalidSpecException("linux.seccomp uses SCMP_ACT_NOTIFY but has no listenerPath: give the seccomp agent's socket");
        using var fd = SeccompLoader.Load(program) ?? throw new ContainerException("seccomp: the kernel gave no notify fd for a SCMP_ACT_NOTIFY filter");
        SeccompListener.Send(profile.ListenerPath, fd, SeccompListener.CreateState(state, pid, profile.ListenerMetadata));
    }
}
