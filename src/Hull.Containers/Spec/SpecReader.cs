using System.Text.Json;
using Hull.Oci;

namespace Hull.Containers;

/// <summary>
/// A direct reader of config.json (Utf8JsonReader into the <see cref="Spec"/> types) for the runtime's hot path.
/// System.Text.Json's serializer configures its metadata for all ~35 spec types in every process that deserializes
/// a spec; in a short-lived runtime process that set-up cost more than everything else create does in user space.
/// This reader follows the serializer's rules for valid input (case-sensitive names, unknown properties skipped,
/// comments and trailing commas allowed, null gives null, the last of duplicate properties wins) and gives up on
/// anything else: <see cref="TryRead"/> returns null and the caller uses the serializer, whose error messages
/// (with the JSON path and line) stay the ones users see.
/// </summary>
public static class SpecReader
{
    sealed class GiveUp : Exception;

    static readonly JsonReaderOptions Options =
        new() { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true };

    /// <summary>The spec, or null if the input is not something this reader accepts (then use the
    /// serializer).</summary>
    public static Spec? TryRead(ReadOnlySpan<byte> json)
    {
        try
        {
            var r = new Utf8JsonReader(json, Options);
            if (!r.Read()) return null;
            var spec = Obj<Spec>(ref r, Spec);
            if (spec is null || r.Read()) return null;
            return spec;
        }
        catch (GiveUp) { return null; }
        catch (JsonException) { return null; }
        catch (InvalidOperationException) { return null; }
        catch (FormatException) { return null; }
    }

    delegate T Item<T>(ref Utf8JsonReader r);
    delegate void Prop<T>(ref Utf8JsonReader r, T target, string name);

    /// <summary>An object (or null) whose properties <paramref name="prop"/> assigns; the reader is on its first
    /// token.</summary>
    static T? Obj<T>(ref Utf8JsonReader r, Prop<T> prop) where T : class, new()
    {
        if (r.TokenType == JsonTokenType.Null) return null;
        if (r.TokenType != JsonTokenType.StartObject) throw new GiveUp();
        var o = new T();
        while (true)
        {
            Next(ref r);
            if (r.TokenType == JsonTokenType.EndObject) return o;
            var name = r.GetString()!;
            Next(ref r);
            prop(ref r, o, name);
        }
    }

    static void Next(ref Utf8JsonReader r)
    {
        if (!r.Read()) throw new GiveUp();
    }

    static void Skip(ref Utf8JsonReader r) => r.Skip();

    static string? Str(ref Utf8JsonReader r) => r.TokenType switch
    {
        JsonTokenType.Null => null,
        JsonTokenType.String => r.GetString(),
        _ => throw new GiveUp(),
    };

    static bool Bool(ref Utf8JsonReader r) => r.TokenType switch
    {
        JsonTokenType.True => true,
        JsonTokenType.False => false,
        _ => throw new GiveUp(),
    };

    static bool? NBool(ref Utf8JsonReader r) => r.TokenType == JsonTokenType.Null ? null : Bool(ref r);

    static void Num(ref Utf8JsonReader r) { if (r.TokenType != JsonTokenType.Number) throw new GiveUp(); }
    static uint U32(ref Utf8JsonReader r) { Num(ref r); return r.TryGetUInt32(out var v) ? v : throw new GiveUp(); }
    static int I32(ref Utf8JsonReader r) { Num(ref r); return r.TryGetInt32(out var v) ? v : throw new GiveUp(); }
    static long I64(ref Utf8JsonReader r) { Num(ref r); return r.TryGetInt64(out var v) ? v : throw new GiveUp(); }
    static ulong U64(ref Utf8JsonReader r) { Num(ref r); return r.TryGetUInt64(out var v) ? v : throw new GiveUp(); }
    static ushort U16(ref Utf8JsonReader r) { Num(ref r); return r.TryGetUInt16(out var v) ? v : throw new GiveUp(); }
    static uint? NU32(ref Utf8JsonReader r) => r.TokenType == JsonTokenType.Null ? null : U32(ref r);
    static int? NI32(ref Utf8JsonReader r) => r.TokenType == JsonTokenType.Null ? null : I32(ref r);
    static long? NI64(ref Utf8JsonReader r) => r.TokenType == JsonTokenType.Null ? null : I64(ref r);
    static ulong? NU64(ref Utf8JsonReader r) => r.TokenType == JsonTokenType.Null ? null : U64(ref r);
    static ushort? NU16(ref Utf8JsonReader r) => r.TokenType == JsonTokenType.Null ? null : U16(ref r);

    static List<T>? List<T>(ref Utf8JsonReader r, Item<T> item)
    {
        if (r.TokenType == JsonTokenType.Null) return null;
        if (r.TokenType != JsonTokenType.StartArray) throw new GiveUp();
        var list = new List<T>();
        while (true)
        {
            Next(ref r);
            if (r.TokenType == JsonTokenType.EndArray) return list;
            list.Add(item(ref r));
        }
    }

    static List<string>? Strs(ref Utf8JsonReader r) => List(ref r, Str)!;

    static Dictionary<string, T>? Dict<T>(ref Utf8JsonReader r, Item<T> item)
    {
        if (r.TokenType == JsonTokenType.Null) return null;
        if (r.TokenType != JsonTokenType.StartObject) throw new GiveUp();
        var d = new Dictionary<string, T>();
        while (true)
        {
            Next(ref r);
            if (r.TokenType == JsonTokenType.EndObject) return d;
            var k = r.GetString()!;
            Next(ref r);
            d[k] = item(ref r);
        }
    }

    // --- the spec's types, property by property (names as in Hull.Oci.Spec's JsonPropertyName) ---------------------

    static void Spec(ref Utf8JsonReader r, Spec s, string n)
    {
        switch (n)
        {
            case "ociVersion": s.OciVersion = Str(ref r)!; break;
            case "process": s.Process = Obj<Hull.Oci.Process>(ref r, Process); break;
            case "root": s.Root = Obj<Root>(ref r, (ref Utf8JsonReader r, Root o, string n) =>
                {
                    if (n == "path") o.Path = Str(ref r)!; else if (n == "readonly") o.Readonly =
                        Bool(ref r); else Skip(ref r);
                }); break;
            case "hostname": s.Hostname = Str(ref r); break;
            case "domainname": s.Domainname = Str(ref r); break;
            case "mounts": s.Mounts = List(ref r, (ref Utf8JsonReader r) => Obj<Mount>(ref r, Mount)!); break;
            case "hooks": s.Hooks = Obj<Hooks>(ref r, Hooks); break;
            case "annotations": s.Annotations = Dict(ref r, Str)!; break;
            case "linux": s.Linux = Obj<Hull.Oci.Linux>(ref r, Linux); break;
            default: Skip(ref r); break;
        }
    }

    static void Process(ref Utf8JsonReader r, Hull.Oci.Process p, string n)
    {
        switch (n)
        {
            case "terminal": p.Terminal = Bool(ref r); break;
            case "consoleSize": p.ConsoleSize = Obj<Box>(ref r, (ref Utf8JsonReader r, Box o, string n) =>
                {
                    if (n == "height") o.Height = U32(ref r); else if (n == "width") o.Width =
                        U32(ref r); else Skip(ref r);
                }); break;
            case "user": p.User = Obj<User>(ref r, User)!; break;
            case "args": p.Args = Strs(ref r); break;
            case "commandLine": p.CommandLine = Str(ref r); break;
            case "env": p.Env = Strs(ref r); break;
            case "cwd": p.Cwd = Str(ref r)!; break;
            case "capabilities": p.Capabilities =
                Obj<Hull.Oci.Capabilities>(ref r, (ref Utf8JsonReader r, Hull.Oci.Capabilities c, string n) =>
                {
                    switch (n)
                    {
                        case "bounding": c.Bounding = Strs(ref r); break;
                        case "effective": c.Effective = Strs(ref r); break;
                        case "inheritable": c.Inheritable = Strs(ref r); break;
                        case "permitted": c.Permitted = Strs(ref r); break;
                        case "ambient": c.Ambient = Strs(ref r); break;
                        default: Skip(ref r); break;
                    }
                }); break;
            case "rlimits": p.Rlimits = List(ref r,
                (ref Utf8JsonReader r) => Obj<Rlimit>(ref r, (ref Utf8JsonReader r, Rlimit l, string n) =>
                {
                    if (n == "type") l.Type = Str(ref r)!; else if (n == "hard") l.Hard =
                        U64(ref r); else if (n == "soft") l.Soft = U64(ref r); else Skip(ref r);
                })!); break;
            case "noNewPrivileges": p.NoNewPrivileges = Bool(ref r); break;
            case "apparmorProfile": p.ApparmorProfile = Str(ref r); break;
            case "oomScoreAdj": p.OomScoreAdj = NI32(ref r); break;
            case "selinuxLabel": p.SelinuxLabel = Str(ref r); break;
            case "scheduler": p.Scheduler = Obj<Scheduler>(ref r, (ref Utf8JsonReader r, Scheduler s, string n) =>
                {
                    switch (n)
                    {
                        case "policy": s.Policy = Str(ref r)!; break;
                        case "nice": s.Nice = NI32(ref r); break;
                        case "priority": s.Priority = NI32(ref r); break;
                        case "flags": s.Flags = Strs(ref r); break;
                        case "runtime": s.Runtime = NU64(ref r); break;
                        case "deadline": s.Deadline = NU64(ref r); break;
                        case "period": s.Period = NU64(ref r); break;
                        default: Skip(ref r); break;
                    }
                }); break;
            case "ioPriority": p.IoPriority = Obj<IoPriority>(ref r, (ref Utf8JsonReader r, IoPriority o, string n) =>
                {
                    if (n == "class") o.Class = Str(ref r)!; else if (n == "priority") o.Priority =
                        I32(ref r); else Skip(ref r);
                }); break;
            case "execCPUAffinity": p.ExecCpuAffinity =
                Obj<CpuAffinity>(ref r, (ref Utf8JsonReader r, CpuAffinity o, string n) =>
                {
                    if (n == "initial") o.Initial = Str(ref r); else if (n == "final") o.Final =
                        Str(ref r); else Skip(ref r);
                }); break;
            default: Skip(ref r); break;
        }
    }

    static void User(ref Utf8JsonReader r, User u, string n)
    {
        switch (n)
        {
            case "uid": u.Uid = U32(ref r); break;
            case "gid": u.Gid = U32(ref r); break;
            case "umask": u.Umask = NU32(ref r); break;
            case "additionalGids": u.AdditionalGids = List(ref r, U32); break;
            case "username": u.Username = Str(ref r); break;
            default: Skip(ref r); break;
        }
    }

    static IdMapping IdMap(ref Utf8JsonReader r) =>
        Obj<IdMapping>(ref r, (ref Utf8JsonReader r, IdMapping m, string n) =>
    {
        if (n == "containerID") m.ContainerId = U32(ref r); else if (n == "hostID") m.HostId =
            U32(ref r); else if (n == "size") m.Size = U32(ref r); else Skip(ref r);
    })!;

    static void Mount(ref Utf8JsonReader r, Mount m, string n)
    {
        switch (n)
        {
            case "destination": m.Destination = Str(ref r)!; break;
            case "type": m.Type = Str(ref r); break;
            case "source": m.Source = Str(ref r); break;
            case "options": m.Options = Strs(ref r); break;
            case "uidMappings": m.UidMappings = List(ref r, IdMap); break;
            case "gidMappings": m.GidMappings = List(ref r, IdMap); break;
            default: Skip(ref r); break;
        }
    }

    static List<Hook>? HookList(ref Utf8JsonReader r) =>
        List(ref r, (ref Utf8JsonReader r) => Obj<Hook>(ref r, (ref Utf8JsonReader r, Hook h, string n) =>
    {
        switch (n)
        {
            case "path": h.Path = Str(ref r)!; break;
            case "args": h.Args = Strs(ref r); break;
            case "env": h.Env = Strs(ref r); break;
            case "timeout": h.Timeout = NI32(ref r); break;
            default: Skip(ref r); break;
        }
    })!);

    static void Hooks(ref Utf8JsonReader r, Hooks h, string n)
    {
        switch (n)
        {
            case "prestart": h.Prestart = HookList(ref r); break;
            case "createRuntime": h.CreateRuntime = HookList(ref r); break;
            case "createContainer": h.CreateContainer = HookList(ref r); break;
            case "startContainer": h.StartContainer = HookList(ref r); break;
            case "poststart": h.Poststart = HookList(ref r); break;
            case "poststop": h.Poststop = HookList(ref r); break;
            default: Skip(ref r); break;
        }
    }

    static void Linux(ref Utf8JsonReader r, Hull.Oci.Linux l, string n)
    {
        switch (n)
        {
            case "namespaces": l.Namespaces = List(ref r,
                (ref Utf8JsonReader r) => Obj<Namespace>(ref r, (ref Utf8JsonReader r, Namespace o, string n) =>
                {
                    if (n == "type") o.Type = Str(ref r)!; else if (n == "path") o.Path = Str(ref r); else Skip(ref r);
                })!); break;
            case "uidMappings": l.UidMappings = List(ref r, IdMap); break;
            case "gidMappings": l.GidMappings = List(ref r, IdMap); break;
            case "timeOffsets": l.TimeOffsets = Dict(ref r,
                (ref Utf8JsonReader r) => Obj<TimeOffset>(ref r, (ref Utf8JsonReader r, TimeOffset o, string n) =>
                {
                    if (n == "secs") o.Secs = I64(ref r); else if (n == "nanosecs") o.Nanosecs =
                        U32(ref r); else Skip(ref r);
                })!); break;
            case "devices": l.Devices = List(ref r,
                (ref Utf8JsonReader r) => Obj<Device>(ref r, (ref Utf8JsonReader r, Device d, string n) =>
                {
                    switch (n)
                    {
                        case "type": d.Type = Str(ref r)!; break;
                        case "path": d.Path = Str(ref r)!; break;
                        case "major": d.Major = I64(ref r); break;
                        case "minor": d.Minor = I64(ref r); break;
                        case "fileMode": d.FileMode = NU32(ref r); break;
                        case "uid": d.Uid = NU32(ref r); break;
                        case "gid": d.Gid = NU32(ref r); break;
                        default: Skip(ref r); break;
                    }
                })!); break;
            case "cgroupsPath": l.CgroupsPath = Str(ref r); break;
            case "resources": l.Resources = Obj<Resources>(ref r, Resources); break;
            case "rootfsPropagation": l.RootfsPropagation = Str(ref r); break;
            case "seccomp": l.Seccomp = Obj<Hull.Oci.Seccomp>(ref r, Seccomp); break;
            case "sysctl": l.Sysctl = Dict(ref r, Str)!; break;
            case "maskedPaths": l.MaskedPaths = Strs(ref r); break;
            case "readonlyPaths": l.ReadonlyPaths = Strs(ref r); break;
            case "mountLabel": l.MountLabel = Str(ref r); break;
            case "personality": l.Personality = Obj<Personality>(ref r,
                (ref Utf8JsonReader r, Personality p, string n) =>
                {
                    if (n == "domain") p.Domain = Str(ref r)!; else if (n == "flags") p.Flags =
                        Strs(ref r); else Skip(ref r);
                }); break;
            case "intelRdt": l.IntelRdt = Obj<IntelRdt>(ref r, (ref Utf8JsonReader r, IntelRdt o, string n) =>
                {
                    if (n == "closID") o.ClosId = Str(ref r); else if (n == "l3CacheSchema") o.L3CacheSchema =
                        Str(ref r); else if (n == "memBwSchema") o.MemBwSchema = Str(ref r); else Skip(ref r);
                }); break;
            default: Skip(ref r); break;
        }
    }

    static void Seccomp(ref Utf8JsonReader r, Hull.Oci.Seccomp s, string n)
    {
        switch (n)
        {
            case "defaultAction": s.DefaultAction = Str(ref r)!; break;
            case "defaultErrnoRet": s.DefaultErrnoRet = NU32(ref r); break;
            case "architectures": s.Architectures = Strs(ref r); break;
            case "flags": s.Flags = Strs(ref r); break;
            case "listenerPath": s.ListenerPath = Str(ref r); break;
            case "listenerMetadata": s.ListenerMetadata = Str(ref r); break;
            case "syscalls": s.Syscalls = List(ref r,
                (ref Utf8JsonReader r) => Obj<SeccompSyscall>(ref r,
                (ref Utf8JsonReader r, SeccompSyscall c, string n) =>
                {
                    switch (n)
                    {
                        case "names": c.Names = Strs(ref r)!; break;
                        case "action": c.Action = Str(ref r)!; break;
                        case "errnoRet": c.ErrnoRet = NU32(ref r); break;
                        case "args": c.Args = List(ref r,
                            (ref Utf8JsonReader r) => Obj<SeccompArg>(ref r,
                            (ref Utf8JsonReader r, SeccompArg a, string n) =>
                            {
                                switch (n)
                                {
                                    case "index": a.Index = U32(ref r); break;
                                    case "value": a.Value = U64(ref r); break;
                                    case "valueTwo": a.ValueTwo = U64(ref r); break;
                                    case "op": a.Op = Str(ref r)!; break;
                                    default: Skip(ref r); break;
                                }
                            })!); break;
                        default: Skip(ref r); break;
                    }
                })!); break;
            default: Skip(ref r); break;
        }
    }

    static void Resources(ref Utf8JsonReader r, Resources x, string n)
    {
        switch (n)
        {
            case "devices": x.Devices = List(ref r,
                (ref Utf8JsonReader r) => Obj<DeviceCgroup>(ref r, (ref Utf8JsonReader r, DeviceCgroup d, string n) =>
                {
                    switch (n)
                    {
                        case "allow": d.Allow = Bool(ref r); break;
                        case "type": d.Type = Str(ref r); break;
                        case "major": d.Major = NI64(ref r); break;
                        case "minor": d.Minor = NI64(ref r); break;
                        case "access": d.Access = Str(ref r); break;
                        default: Skip(ref r); break;
                    }
                })!); break;
            case "memory": x.Memory = Obj<Memory>(ref r, (ref Utf8JsonReader r, Memory m, string n) =>
                {
                    switch (n)
                    {
                        case "limit": m.Limit = NI64(ref r); break;
                        case "reservation": m.Reservation = NI64(ref r); break;
                        case "swap": m.Swap = NI64(ref r); break;
                        case "kernel": m.Kernel = NI64(ref r); break;
                        case "kernelTCP": m.KernelTcp = NI64(ref r); break;
                        case "swappiness": m.Swappiness = NU64(ref r); break;
                        case "disableOOMKiller": m.DisableOomKiller = NBool(ref r); break;
                        case "useHierarchy": m.UseHierarchy = NBool(ref r); break;
                        case "checkBeforeUpdate": m.CheckBeforeUpdate = NBool(ref r); break;
                        default: Skip(ref r); break;
                    }
                }); break;
            case "cpu": x.Cpu = Obj<Cpu>(ref r, (ref Utf8JsonReader r, Cpu c, string n) =>
                {
                    switch (n)
                    {
                        case "shares": c.Shares = NU64(ref r); break;
                        case "quota": c.Quota = NI64(ref r); break;
                        case "burst": c.Burst = NU64(ref r); break;
                        case "period": c.Period = NU64(ref r); break;
                        case "realtimeRuntime": c.RealtimeRuntime = NI64(ref r); break;
                        case "realtimePeriod": c.RealtimePeriod = NU64(ref r); break;
                        case "cpus": c.Cpus = Str(ref r); break;
                        case "mems": c.Mems = Str(ref r); break;
                        case "idle": c.Idle = NI64(ref r); break;
                        default: Skip(ref r); break;
                    }
                }); break;
            case "pids": x.Pids = Obj<Pids>(ref r,
                (ref Utf8JsonReader r, Pids p, string n) =>
                { if (n == "limit") p.Limit = I64(ref r); else Skip(ref r); }); break;
            case "blockIO": x.BlockIo = Obj<BlockIo>(ref r, BlockIo); break;
            case "hugepageLimits": x.HugepageLimits =
                List(ref r, (ref Utf8JsonReader r) =>
                Obj<HugepageLimit>(ref r, (ref Utf8JsonReader r, HugepageLimit h, string n) =>
                {
                    if (n == "pageSize") h.PageSize = Str(ref r)!; else if (n == "limit") h.Limit =
                        U64(ref r); else Skip(ref r);
                })!); break;
            case "network": x.Network = Obj<Network>(ref r, (ref Utf8JsonReader r, Network w, string n) =>
                {
                    if (n == "classID") w.ClassId = NU32(ref r);
                    else if (n == "priorities") w.Priorities =
                        List(ref r, (ref Utf8JsonReader r) =>
                        Obj<InterfacePriority>(ref r, (ref Utf8JsonReader r, InterfacePriority p, string n) =>
                        {
                            if (n == "name") p.Name = Str(ref r)!; else if (n == "priority") p.Priority =
                                U32(ref r); else Skip(ref r);
                        })!);
                    else Skip(ref r);
                }); break;
            case "rdma": x.Rdma = Dict(ref r, (ref Utf8JsonReader r) =>
                Obj<Rdma>(ref r, (ref Utf8JsonReader r, Rdma d, string n) =>
                {
                    if (n == "hcaHandles") d.HcaHandles = NU32(ref r); else if (n == "hcaObjects") d.HcaObjects =
                        NU32(ref r); else Skip(ref r);
                })!); break;
            case "unified": x.Unified = Dict(ref r, Str)!; break;
            default: Skip(ref r); break;
        }
    }

    static ThrottleDevice Throttle(ref Utf8JsonReader r) =>
        Obj<ThrottleDevice>(ref r, (ref Utf8JsonReader r, ThrottleDevice t, string n) =>
    {
        if (n == "major") t.Major = I64(ref r); else if (n == "minor") t.Minor =
            I64(ref r); else if (n == "rate") t.Rate = U64(ref r); else Skip(ref r);
    })!;

    static void BlockIo(ref Utf8JsonReader r, BlockIo b, string n)
    {
        switch (n)
        {
            case "weight": b.Weight = NU16(ref r); break;
            case "leafWeight": b.LeafWeight = NU16(ref r); break;
            case "weightDevice": b.WeightDevice =
                List(ref r, (ref Utf8JsonReader r) =>
                Obj<WeightDevice>(ref r, (ref Utf8JsonReader r, WeightDevice w, string n) =>
                {
                    switch (n)
                    {
                        case "major": w.Major = I64(ref r); break;
                        case "minor": w.Minor = I64(ref r); break;
                        case "weight": w.Weight = NU16(ref r); break;
                        case "leafWeight": w.LeafWeight = NU16(ref r); break;
                        default: Skip(ref r); break;
                    }
                })!); break;
            case "throttleReadBpsDevice": b.ThrottleReadBpsDevice = List(ref r, Throttle); break;
            case "throttleWriteBpsDevice": b.ThrottleWriteBpsDevice = List(ref r, Throttle); break;
            case "throttleReadIOPSDevice": b.ThrottleReadIopsDevice = List(ref r, Throttle); break;
            case "throttleWriteIOPSDevice": b.ThrottleWriteIopsDevice = List(ref r, Throttle); break;
            default: Skip(ref r); break;
        }
    }
}
