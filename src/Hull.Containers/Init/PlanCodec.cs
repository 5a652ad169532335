using System.Buffers.Binary;
using System.Text;
using Hull.Oci;

namespace Hull.Containers;

/// <summary>
/// The compact binary form of the messages between the runtime and the container init (<see cref="InitPlan"/> and
/// <see cref="SyncMessage"/>). Both ends are the same binary, so the format needs no versioning across releases; it
/// only has to be fast to read in a freshly started process. System.Text.Json sets up its metadata for every type of
/// the OCI spec once per process, which cost the init more than all its mounts; this reader allocates only the
/// objects it returns.
/// Carried: everything the init reads. Not carried: linux.resources and linux.intelRdt (the runtime applies them to
/// the cgroup before the init runs). SpecCoverageTests fills every property of the plan and fails on any other
/// property that does not come back.
/// Encoding: unsigned varints (LEB128), signed values zig-zag encoded, strings and byte arrays as varint (length + 1)
/// with 0 for null, lists likewise, nullable values behind a presence byte.
/// </summary>
public static class PlanCodec
{
    const byte PlanTag = 0xB1, MessageTag = 0xB2;

    public static byte[] Encode(InitPlan p)
    {
        var w = new Writer();
        w.Byte(PlanTag);
        w.Byte((byte)p.Mode); w.Str(p.Id); w.Str(p.Bundle); w.Str(p.Rootfs);
        uint flags = 0;
        if (p.NewMountNamespace) flags |= 1;
        if (p.NewUserNamespace) flags |= 2;
        if (p.NewNetworkNamespace) flags |= 4;
        if (p.NewUtsNamespace) flags |= 8;
        if (p.NewCgroupNamespace) flags |= 16;
        if (p.InUserNamespace) flags |= 32;
        if (p.NoPivot) flags |= 64;
        if (p.ParentHooks) flags |= 128;
        w.U(flags);
        w.S(p.ConsoleSocketFd); w.S(p.FifoFd); w.S(p.FirstPrivateFd); w.S(p.MountNamespaceFd);
        w.U((uint)p.BindSourceFds.Count);
        foreach (var fd in p.BindSourceFds) w.S(fd);
        w.U((uint)p.CgroupPaths.Count);
        foreach (var path in p.CgroupPaths) w.Str(path);
        w.Bytes(p.SeccompProgram); w.U(p.SeccompFlags);
        if (w.Has(p.HookState)) WriteState(w, p.HookState!);
        if (w.Has(p.Spec)) WriteSpec(w, p.Spec!);
        if (w.Has(p.Process)) WriteProcess(w, p.Process!);
        return w.ToArray();
    }

    public static InitPlan DecodePlan(byte[] data)
    {
        var r = new Reader(data);
        if (r.Byte() != PlanTag)
            throw new ContainerException(
                "the init plan from the runtime is not in the expected format (is the init binary the runtime's own?)");
        var p = new InitPlan
        {
            Mode = Mode(r.Byte()), Id = r.Str() ?? "", Bundle = r.Str() ?? "", Rootfs = r.Str() ?? "",
        };
        var flags = r.U();
        p.NewMountNamespace = (flags & 1) != 0;
        p.NewUserNamespace = (flags & 2) != 0;
        p.NewNetworkNamespace = (flags & 4) != 0;
        p.NewUtsNamespace = (flags & 8) != 0;
        p.NewCgroupNamespace = (flags & 16) != 0;
        p.InUserNamespace = (flags & 32) != 0;
        p.NoPivot = (flags & 64) != 0;
        p.ParentHooks = (flags & 128) != 0;
        p.ConsoleSocketFd = (int)r.S(); p.FifoFd = (int)r.S(); p.FirstPrivateFd = (int)r.S();
        p.MountNamespaceFd = (int)r.S();
        for (var n = r.U(); n > 0; n--) p.BindSourceFds.Add((int)r.S());
        for (var n = r.U(); n > 0; n--) p.CgroupPaths.Add(r.Str() ?? "");
        p.SeccompProgram = r.Bytes(); p.SeccompFlags = (uint)r.U();
        if (r.Has()) p.HookState = ReadState(ref r);
        if (r.Has()) p.Spec = ReadSpec(ref r);
        if (r.Has()) p.Process = ReadProcess(ref r);
        r.End();
        return p;
    }

    public static byte[] Encode(SyncMessage m)
    {
        var w = new Writer();
        w.Byte(MessageTag); w.Byte((byte)m.Type); w.Str(m.Message); w.S(m.Pid); w.S(m.ExitCode);
        return w.ToArray();
    }

    public static SyncMessage DecodeMessage(byte[] data)
    {
        var r = new Reader(data);
        if (r.Byte() != MessageTag)
            throw new ContainerException("a message on the init sync socket is not in the expected format");
        var m = new SyncMessage
        {
            Type = Type(r.Byte()), Message = r.Str(), Pid = (int)r.S(),
            ExitCode = (int)r.S(),
        };
        r.End();
        return m;
    }

    static InitMode Mode(byte b) => b <= (byte)InitMode.Run ? (InitMode)b : throw Unknown("init mode", b);
    static SyncType Type(byte b) => b <= (byte)SyncType.Error ? (SyncType)b : throw Unknown("sync message type", b);
    static ContainerException Unknown(string what, byte b) =>
        new($"the {what} {b} on the init sync socket is unknown (is the init binary the runtime's own?)");

    /// <summary>A profile's binary encoding (the key of <see cref="SeccompCache"/>).</summary>
    public static byte[] EncodeSeccomp(Hull.Oci.Seccomp profile)
    {
        var w = new Writer();
        WriteSeccomp(w, profile);
        return w.ToArray();
    }

    // --- the spec -------------------------------------------------------------------------------------------------

    static void WriteSpec(Writer w, Spec s)
    {
        w.Str(s.OciVersion);
        if (w.Has(s.Process)) WriteProcess(w, s.Process!);
        if (w.Has(s.Root)) { w.Str(s.Root!.Path); w.Bool(s.Root.Readonly); }
        w.Str(s.Hostname); w.Str(s.Domainname);
        w.List(s.Mounts, (w, m) =>
        {
            w.Str(m.Destination); w.Str(m.Type); w.Str(m.Source); w.Strs(m.Options);
            w.List(m.UidMappings, WriteIdMapping); w.List(m.GidMappings, WriteIdMapping);
        });
        if (w.Has(s.Hooks))
        {
            var h = s.Hooks!;
            var lists = new[]
            {
                h.Prestart, h.CreateRuntime, h.CreateContainer, h.StartContainer, h.Poststart, h.Poststop,
            };
            foreach (var list in lists)
                w.List(list, (w, k) => { w.Str(k.Path); w.Strs(k.Args); w.Strs(k.Env); w.NullS(k.Timeout); });
        }
        w.Dict(s.Annotations);
        if (w.Has(s.Linux)) WriteLinux(w, s.Linux!);
    }

    static Spec ReadSpec(ref Reader r)
    {
        var s = new Spec { OciVersion = r.Str() ?? "" };
        if (r.Has()) s.Process = ReadProcess(ref r);
        if (r.Has()) s.Root = new Root { Path = r.Str() ?? "", Readonly = r.Bool() };
        s.Hostname = r.Str(); s.Domainname = r.Str();
        s.Mounts = r.List((ref Reader r) => new Mount
        {
            Destination = r.Str() ?? "", Type = r.Str(), Source = r.Str(), Options = r.Strs(),
            UidMappings = r.List(ReadIdMapping), GidMappings = r.List(ReadIdMapping),
        });
        if (r.Has())
        {
            var h = new Hooks();
            var lists = new List<Hook>?[6];
            for (var i = 0; i < 6; i++)
                lists[i] = r.List((ref Reader r) =>
                    new Hook { Path = r.Str() ?? "", Args = r.Strs(), Env = r.Strs(), Timeout = (int?)r.NullS() });
            (h.Prestart, h.CreateRuntime, h.CreateContainer) = (lists[0], lists[1], lists[2]);
            (h.StartContainer, h.Poststart, h.Poststop) = (lists[3], lists[4], lists[5]);
            s.Hooks = h;
        }
        s.Annotations = r.Dict();
        if (r.Has()) s.Linux = ReadLinux(ref r);
        return s;
    }

    static void WriteIdMapping(Writer w, IdMapping m) { w.U(m.ContainerId); w.U(m.HostId); w.U(m.Size); }
    static IdMapping ReadIdMapping(ref Reader r) =>
        new() { ContainerId = (uint)r.U(), HostId = (uint)r.U(), Size = (uint)r.U() };

    static void WriteProcess(Writer w, Hull.Oci.Process p)
    {
        w.Bool(p.Terminal);
        if (w.Has(p.ConsoleSize)) { w.U(p.ConsoleSize!.Height); w.U(p.ConsoleSize.Width); }
        w.U(p.User.Uid); w.U(p.User.Gid); w.NullU(p.User.Umask);
        w.List(p.User.AdditionalGids, (w, g) => w.U(g));
        w.Str(p.User.Username);
        w.Strs(p.Args); w.Str(p.CommandLine); w.Strs(p.Env); w.Str(p.Cwd);
        if (w.Has(p.Capabilities))
        {
            var c = p.Capabilities!;
            w.Strs(c.Bounding); w.Strs(c.Effective); w.Strs(c.Inheritable); w.Strs(c.Permitted); w.Strs(c.Ambient);
        }
        w.List(p.Rlimits, (w, l) => { w.Str(l.Type); w.U(l.Hard); w.U(l.Soft); });
        w.Bool(p.NoNewPrivileges);
        w.Str(p.ApparmorProfile);
        w.NullS(p.OomScoreAdj);
        w.Str(p.SelinuxLabel);
        if (w.Has(p.Scheduler))
        {
            var s = p.Scheduler!;
            w.Str(s.Policy); w.NullS(s.Nice); w.NullS(s.Priority); w.Strs(s.Flags);
            w.NullU(s.Runtime); w.NullU(s.Deadline); w.NullU(s.Period);
        }
        if (w.Has(p.IoPriority)) { w.Str(p.IoPriority!.Class); w.S(p.IoPriority.Priority); }
        if (w.Has(p.ExecCpuAffinity)) { w.Str(p.ExecCpuAffinity!.Initial); w.Str(p.ExecCpuAffinity.Final); }
    }

    static Hull.Oci.Process ReadProcess(ref Reader r)
    {
        var p = new Hull.Oci.Process { Terminal = r.Bool() };
        if (r.Has()) p.ConsoleSize = new Box { Height = (uint)r.U(), Width = (uint)r.U() };
        p.User = new User { Uid = (uint)r.U(), Gid = (uint)r.U(), Umask = (uint?)r.NullU() };
        p.User.AdditionalGids = r.List((ref Reader r) => (uint)r.U());
        p.User.Username = r.Str();
        p.Args = r.Strs(); p.CommandLine = r.Str(); p.Env = r.Strs(); p.Cwd = r.Str() ?? "/";
        if (r.Has())
            p.Capabilities = new Hull.Oci.Capabilities
            {
                Bounding = r.Strs(), Effective = r.Strs(), Inheritable = r.Strs(), Permitted = r.Strs(),
                Ambient = r.Strs(),
            };
        p.Rlimits = r.List((ref Reader r) => new Rlimit { Type = r.Str() ?? "", Hard = r.U(), Soft = r.U() });
        p.NoNewPrivileges = r.Bool();
        p.ApparmorProfile = r.Str();
        p.OomScoreAdj = (int?)r.NullS();
        p.SelinuxLabel = r.Str();
        if (r.Has())
            p.Scheduler = new Scheduler
            {
                Policy = r.Str() ?? "", Nice = (int?)r.NullS(), Priority = (int?)r.NullS(), Flags = r.Strs(),
                Runtime = r.NullU(), Deadline = r.NullU(), Period = r.NullU(),
            };
        if (r.Has()) p.IoPriority = new IoPriority { Class = r.Str() ?? "", Priority = (int)r.S() };
        if (r.Has()) p.ExecCpuAffinity = new CpuAffinity { Initial = r.Str(), Final = r.Str() };
        return p;
    }

    static void WriteLinux(Writer w, Hull.Oci.Linux l)
    {
        w.List(l.Namespaces, (w, n) => { w.Str(n.Type); w.Str(n.Path); });
        w.List(l.UidMappings, WriteIdMapping); w.List(l.GidMappings, WriteIdMapping);
        w.List(l.TimeOffsets?.ToList(), (w, kv) => { w.Str(kv.Key); w.S(kv.Value.Secs); w.U(kv.Value.Nanosecs); });
        w.List(l.Devices, (w, d) =>
        {
            w.Str(d.Type); w.Str(d.Path); w.S(d.Major); w.S(d.Minor);
            w.NullU(d.FileMode); w.NullU(d.Uid); w.NullU(d.Gid);
        });
        w.Str(l.CgroupsPath);
        w.Str(l.RootfsPropagation);
        if (w.Has(l.Seccomp)) WriteSeccomp(w, l.Seccomp!);
        w.Dict(l.Sysctl);
        w.Strs(l.MaskedPaths); w.Strs(l.ReadonlyPaths);
        w.Str(l.MountLabel);
        if (w.Has(l.Personality)) { w.Str(l.Personality!.Domain); w.Strs(l.Personality.Flags); }
    }

    static void WriteSeccomp(Writer w, Hull.Oci.Seccomp s)
    {
        w.Str(s.DefaultAction); w.NullU(s.DefaultErrnoRet); w.Strs(s.Architectures); w.Strs(s.Flags);
        w.Str(s.ListenerPath); w.Str(s.ListenerMetadata);
        w.List(s.Syscalls, (w, c) =>
        {
            w.Strs(c.Names); w.Str(c.Action); w.NullU(c.ErrnoRet);
            w.List(c.Args, (w, a) => { w.U(a.Index); w.U(a.Value); w.U(a.ValueTwo); w.Str(a.Op); });
        });
    }

    static Hull.Oci.Linux ReadLinux(ref Reader r)
    {
        var l = new Hull.Oci.Linux
        {
            Namespaces = r.List((ref Reader r) => new Namespace { Type = r.Str() ?? "", Path = r.Str() }),
            UidMappings = r.List(ReadIdMapping), GidMappings = r.List(ReadIdMapping),
        };
        var offsets = r.List((ref Reader r) =>
            new KeyValuePair<string, TimeOffset>(
                r.Str() ?? "", new TimeOffset { Secs = r.S(), Nanosecs = (uint)r.U() }));
        if (offsets is not null) l.TimeOffsets = new Dictionary<string, TimeOffset>(offsets);
        l.Devices = r.List((ref Reader r) => new Device
        {
            Type = r.Str() ?? "", Path = r.Str() ?? "", Major = r.S(), Minor = r.S(),
            FileMode = (uint?)r.NullU(), Uid = (uint?)r.NullU(), Gid = (uint?)r.NullU(),
        });
        l.CgroupsPath = r.Str();
        l.RootfsPropagation = r.Str();
        if (r.Has())
        {
            l.Seccomp = new Hull.Oci.Seccomp
            {
                DefaultAction = r.Str() ?? "", DefaultErrnoRet = (uint?)r.NullU(),
                Architectures = r.Strs(), Flags = r.Strs(),
                ListenerPath = r.Str(), ListenerMetadata = r.Str(),
                Syscalls = r.List((ref Reader r) => new SeccompSyscall
                {
                    Names = r.Strs() ?? [], Action = r.Str() ?? "", ErrnoRet = (uint?)r.NullU(),
                    Args = r.List((ref Reader r) =>
                        new SeccompArg { Index = (uint)r.U(), Value = r.U(), ValueTwo = r.U(), Op = r.Str() ?? "" }),
                }),
            };
        }
        l.Sysctl = r.Dict();
        l.MaskedPaths = r.Strs(); l.ReadonlyPaths = r.Strs();
        l.MountLabel = r.Str();
        if (r.Has()) l.Personality = new Personality { Domain = r.Str() ?? "", Flags = r.Strs() };
        return l;
    }

    static void WriteState(Writer w, State s)
    {
        w.Str(s.OciVersion); w.Str(s.Id); w.Str(s.Status); w.S(s.Pid); w.Str(s.Bundle); w.Dict(s.Annotations);
    }

    static State ReadState(ref Reader r) =>
        new()
        {
            OciVersion = r.Str() ?? "", Id = r.Str() ?? "", Status = r.Str() ?? "", Pid = (int)r.S(),
            Bundle = r.Str() ?? "", Annotations = r.Dict(),
        };

    // --- primitives -----------------------------------------------------------------------------------------------

    sealed class Writer
    {
        byte[] _buf = new byte[2048];
        int _n;

        void Ensure(int more)
        {
            if (_n + more <= _buf.Length) return;
            Array.Resize(ref _buf, Math.Max(_buf.Length * 2, _n + more));
        }

        public void Byte(byte b) { Ensure(1); _buf[_n++] = b; }
        public void Bool(bool b) => Byte(b ? (byte)1 : (byte)0);

        public void U(ulong v)
        {
            Ensure(10);
            while (v >= 0x80) { _buf[_n++] = (byte)(v | 0x80); v >>= 7; }
            _buf[_n++] = (byte)v;
        }

        public void S(long v) => U((ulong)((v << 1) ^ (v >> 63)));
        public void NullU(ulong? v) { if (Has(v)) U(v!.Value); }
        public void NullS(long? v) { if (Has(v)) S(v!.Value); }

        /// <summary>A presence byte; true if the value follows.</summary>
        public bool Has(object? o) { Bool(o is not null); return o is not null; }

        public void Str(string? s)
        {
            if (s is null) { U(0); return; }
            var max = Encoding.UTF8.GetMaxByteCount(s.Length);
            Ensure(max + 5);
            var len = Encoding.UTF8.GetByteCount(s);
            U((ulong)len + 1);
            _n += Encoding.UTF8.GetBytes(s, 0, s.Length, _buf, _n);
        }

        public void Bytes(byte[]? b)
        {
            if (b is null) { U(0); return; }
            U((ulong)b.Length + 1);
            Ensure(b.Length);
            b.CopyTo(_buf, _n);
            _n += b.Length;
        }

        public void List<T>(IReadOnlyList<T>? list, Action<Writer, T> item)
        {
            if (list is null) { U(0); return; }
            U((ulong)list.Count + 1);
            foreach (var x in list) item(this, x);
        }

        public void Strs(List<string>? list) => List(list, (w, s) => w.Str(s));

        public void Dict(Dictionary<string, string>? d)
        {
            if (d is null) { U(0); return; }
            U((ulong)d.Count + 1);
            foreach (var (k, v) in d) { Str(k); Str(v); }
        }

        public byte[] ToArray() => _buf.AsSpan(0, _n).ToArray();
    }

    delegate T ReadItem<T>(ref Reader r);

    ref struct Reader(byte[] data)
    {
        readonly byte[] _data = data;
        int _pos;

        static ContainerException Corrupt() => new("the init plan from the runtime is truncated or corrupt");

        public byte Byte() => _pos < _data.Length ? _data[_pos++] : throw Corrupt();
        public bool Bool() => Byte() != 0;
        public bool Has() => Bool();

        public ulong U()
        {
            ulong v = 0;
            for (var shift = 0; shift < 70; shift += 7)
            {
                var b = Byte();
                v |= (ulong)(b & 0x7f) << shift;
                if (b < 0x80) return v;
            }
            throw Corrupt();
        }

        public long S() { var u = U(); return (long)(u >> 1) ^ -(long)(u & 1); }
        public ulong? NullU() => Has() ? U() : null;
        public long? NullS() => Has() ? S() : null;

        int Length()
        {
            var n = U();
            if (n > (ulong)(_data.Length - _pos) + 1) throw Corrupt();
            return (int)n - 1;
        }

        public string? Str()
        {
            var n = Length();
            if (n < 0) return null;
            var s = Encoding.UTF8.GetString(_data, _pos, n);
            _pos += n;
            return s;
        }

        public byte[]? Bytes()
        {
            var n = Length();
            if (n < 0) return null;
            var b = _data.AsSpan(_pos, n).ToArray();
            _pos += n;
            return b;
        }

        public List<T>? List<T>(ReadItem<T> item)
        {
            var n = Length(); // every item takes at least one byte, so the count is bounded by what is left
            if (n < 0) return null;
            var list = new List<T>(n);
            for (var i = 0; i < n; i++) list.Add(item(ref this));
            return list;
        }

        public List<string>? Strs() => List((ref Reader r) => r.Str()!);

        public Dictionary<string, string>? Dict()
        {
            var n = Length();
            if (n < 0) return null;
            var d = new Dictionary<string, string>(n);
            for (var i = 0; i < n; i++) { var k = Str() ?? ""; d[k] = Str() ?? ""; }
            return d;
        }

        public readonly void End()
        {
            if (_pos != _data.Length) throw Corrupt();
        }
    }
}
