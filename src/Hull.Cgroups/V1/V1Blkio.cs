using Hull.Linux;
using Hull.Oci;

namespace Hull.Cgroups.V1;

/// <summary>cgroup v1 blkio: weights (CFQ's blkio.weight, or BFQ's blkio.bfq.weight on kernels without CFQ) and
/// throttling (blkio.throttle.*_device).</summary>
internal static class V1Blkio
{
    internal static string DeviceHint(string file, long major, long minor, int e) =>
        e is Errors.ENODEV or Errors.EINVAL or Errors.ENOENT
        ? $"{major}:{minor} is not a block device here (see /sys/dev/block), or its I/O scheduler does not support " +
            $"{file}"
        : CgroupFiles.GenericHint(file, e);

    public static void Apply(CgroupFiles f, string d, BlockIo b)
    {
        var bfq = !f.Exists(d, "blkio.weight") && f.Exists(d, "blkio.bfq.weight");
        var weightFile = bfq ? "blkio.bfq.weight" : "blkio.weight";
        var weightDevFile = bfq ? "blkio.bfq.weight_device" : "blkio.weight_device";
        if (b.Weight is { } w and > 0) f.Write(d, weightFile, w.ToString());
        if (b.LeafWeight is { } lw and > 0)
        {
            if (f.Exists(d, "blkio.leaf_weight")) f.Write(d, "blkio.leaf_weight", lw.ToString());
            else f.Warn("linux.resources.blockIO.leafWeight ignored: only the CFQ scheduler had leaf weights and " +
                "this kernel has no blkio.leaf_weight");
        }
        foreach (var wd in b.WeightDevice ?? [])
        {
            if (wd.Weight is { } dw)
                f.Write(d, weightDevFile, $"{wd.Major}:{wd.Minor} {dw}",
                    e => DeviceHint(weightDevFile, wd.Major, wd.Minor, e));
            if (wd.LeafWeight is { } dlw)
            {
                if (f.Exists(d, "blkio.leaf_weight_device"))
                    f.Write(d, "blkio.leaf_weight_device", $"{wd.Major}:{wd.Minor} {dlw}",
                        e => DeviceHint("blkio.leaf_weight_device", wd.Major, wd.Minor, e));
                else f.Warn($"linux.resources.blockIO.weightDevice {wd.Major}:{wd.Minor} leafWeight ignored: this " +
                    "kernel has no blkio.leaf_weight_device");
            }
        }
        Throttle(f, d, "blkio.throttle.read_bps_device", b.ThrottleReadBpsDevice);
        Throttle(f, d, "blkio.throttle.write_bps_device", b.ThrottleWriteBpsDevice);
        Throttle(f, d, "blkio.throttle.read_iops_device", b.ThrottleReadIopsDevice);
        Throttle(f, d, "blkio.throttle.write_iops_device", b.ThrottleWriteIopsDevice);
    }

    static void Throttle(CgroupFiles f, string d, string file, List<ThrottleDevice>? list)
    {
        foreach (var t in list ?? [])
            f.Write(d, file, $"{t.Major}:{t.Minor} {t.Rate}", e => DeviceHint(file, t.Major, t.Minor, e));
    }

    public static void Stats(CgroupFiles f, string d, CgroupStats s)
    {
        // CFQ's files if the kernel has them, else BFQ's, else the throttle layer's (which counts every bio).
        foreach (var prefix in new[] { "blkio.", "blkio.bfq.", "blkio.throttle." })
        {
            var bytes = Parse(f.ReadOrNull(d, prefix + "io_service_bytes_recursive"));
            if (bytes is null) continue;
            if (bytes.Count == 0 && prefix != "blkio.throttle.") continue;
            s.Blkio.IoServiceBytesRecursive = bytes;
            s.Blkio.IoServicedRecursive = Parse(f.ReadOrNull(d, prefix + "io_serviced_recursive"));
            if (prefix == "blkio.")
            {
                s.Blkio.IoQueuedRecursive = Parse(f.ReadOrNull(d, "blkio.io_queued_recursive"));
                s.Blkio.IoServiceTimeRecursive = Parse(f.ReadOrNull(d, "blkio.io_service_time_recursive"));
                s.Blkio.IoWaitTimeRecursive = Parse(f.ReadOrNull(d, "blkio.io_wait_time_recursive"));
                s.Blkio.IoMergedRecursive = Parse(f.ReadOrNull(d, "blkio.io_merged_recursive"));
                s.Blkio.IoTimeRecursive = Parse(f.ReadOrNull(d, "blkio.time_recursive"));
                s.Blkio.SectorsRecursive = Parse(f.ReadOrNull(d, "blkio.sectors_recursive"));
            }
            break;
        }
    }

    /// <summary>"8:0 Read 4096" lines ("Total N" lines are skipped); "8:0 N" lines have no op.</summary>
    internal static List<BlkioEntry>? Parse(string? text)
    {
        if (text is null) return null;
        var list = new List<BlkioEntry>();
        foreach (var line in text.Split('\n'))
        {
            var sp = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (sp.Length < 2) continue;
            var mm = sp[0].Split(':');
            if (mm.Length != 2 || !ulong.TryParse(mm[0], out var maj) || !ulong.TryParse(mm[1], out var min)) continue;
            if (sp.Length == 3 && ulong.TryParse(sp[2], out var v)) list.Add(
                new BlkioEntry { Major = maj, Minor = min, Op = sp[1], Value = v });
            else if (sp.Length == 2 && ulong.TryParse(sp[1], out var v2)) list.Add(
                new BlkioEntry { Major = maj, Minor = min, Op = "", Value = v2 });
        }
        return list;
    }
}
