using Hull.Cgroups.V1;
using Hull.Linux;
using Hull.Oci;

namespace Hull.Cgroups.V2;

/// <summary>cgroup v2 io: io.bfq.weight (BFQ, same 1–1000 scale as blkio) or io.weight (converted to 1–10000),
/// per-device weights, and io.max "MAJ:MIN rbps= wbps= riops= wiops=".</summary>
internal static class V2Io
{
    /// <summary>runc's mapping of blkio weight [10, 1000] onto io.weight [1, 10000] (0 = unset).</summary>
    public static ulong BlkioWeightToIoWeight(ulong w) => w == 0 ? 0 : 1 + (Math.Clamp(w, 10, 1000) - 10) * 9999 / 990;

    public static void Apply(CgroupFiles f, string d, BlockIo b)
    {
        string Hint(string file, int e) => e == Errors.ENOENT ? V2Tree.MissingHint(d, file)
            : CgroupFiles.GenericHint(file, e);
        var bfq = f.Exists(d, "io.bfq.weight");
        if (b.Weight is { } w and > 0)
        {
            if (bfq) f.Write(d, "io.bfq.weight", w.ToString(), e => Hint("io.bfq.weight", e));
            else f.Write(d, "io.weight", "default " + BlkioWeightToIoWeight(w), e => Hint("io.weight", e));
        }
        if (b.LeafWeight is { } lw and > 0) f.Warn(
            "linux.resources.blockIO.leafWeight ignored: cgroup v2 has no leaf weights");
        foreach (var wd in b.WeightDevice ?? [])
        {
            if (wd.Weight is { } dw)
            {
                var (file, value) = bfq ? ("io.bfq.weight", dw.ToString())
                    : ("io.weight", BlkioWeightToIoWeight(dw).ToString());
                f.Write(d, file, $"{wd.Major}:{wd.Minor} {value}",
                    e => e == Errors.ENOENT ? Hint(file, e) : V1Blkio.DeviceHint(file, wd.Major, wd.Minor, e));
            }
            if (wd.LeafWeight is not null) f.Warn(
                $"linux.resources.blockIO.weightDevice {wd.Major}:{wd.Minor} leafWeight ignored: cgroup v2 has no " +
                "leaf weights");
        }
        Max(f, d, "rbps", b.ThrottleReadBpsDevice);
        Max(f, d, "wbps", b.ThrottleWriteBpsDevice);
        Max(f, d, "riops", b.ThrottleReadIopsDevice);
        Max(f, d, "wiops", b.ThrottleWriteIopsDevice);
    }

    static void Max(CgroupFiles f, string d, string key, List<ThrottleDevice>? list)
    {
        foreach (var t in list ?? [])
            f.Write(d, "io.max", $"{t.Major}:{t.Minor} {key}={(t.Rate == 0 ? "max" : t.Rate.ToString())}",
                e => e == Errors.ENOENT ? V2Tree.MissingHint(d, "io.max")
                    : V1Blkio.DeviceHint("io.max", t.Major, t.Minor, e));
    }

    public static void Stats(CgroupFiles f, string d, CgroupStats s)
    {
        var text = f.ReadOrNull(d, "io.stat");
        if (text is null) return;
        var bytes = new List<BlkioEntry>();
        var ios = new List<BlkioEntry>();
        foreach (var line in text.Split('\n'))
        {
            var sp = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (sp.Length < 2) continue;
            var mm = sp[0].Split(':');
            if (mm.Length != 2 || !ulong.TryParse(mm[0], out var maj) || !ulong.TryParse(mm[1], out var min)) continue;
            foreach (var kv in sp.Skip(1))
            {
                var eq = kv.IndexOf('=');
                if (eq < 0 || !ulong.TryParse(kv[(eq + 1)..], out var v)) continue;
                var (list, op) = kv[..eq] switch
                {
                    "rbytes" => (bytes, "Read"), "wbytes" => (bytes, "Write"), "dbytes" => (bytes, "Discard"),
                    "rios" => (ios, "Read"), "wios" => (ios, "Write"), "dios" => (ios, "Discard"),
                    _ => (null, ""),
                };
                list?.Add(new BlkioEntry { Major = maj, Minor = min, Op = op, Value = v });
            }
        }
        s.Blkio.IoServiceBytesRecursive = bytes;
        s.Blkio.IoServicedRecursive = ios;
    }
}
