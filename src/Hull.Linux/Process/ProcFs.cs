using System.Globalization;

namespace Hull.Linux;

/// <summary>The fields Hull reads from /proc/PID/stat (proc_pid_stat(5)).</summary>
/// <param name="State">Field 3: R, S, D, Z, X...</param>
/// <param name="UserTicks">Field 14, utime (clock ticks).</param>
/// <param name="SystemTicks">Field 15, stime (clock ticks).</param>
/// <param name="StartTime">Field 22, starttime (clock ticks since boot): a pid is only ours if it matches.</param>
/// <param name="Parent">Field 4, ppid.</param>
public readonly record struct ProcStat(char State, ulong UserTicks, ulong SystemTicks, ulong StartTime, int Parent);

/// <summary>Facts about a live process read from /proc.</summary>
public static class ProcFs
{
    /// <summary>/proc/PID/stat of a process; null if it does not exist (or cannot be read).</summary>
    public static ProcStat? Stat(int pid)
    {
        string text;
        try { text = File.ReadAllText($"/proc/{pid}/stat"); }
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
        // The command (field 2) is in parentheses and may hold spaces and ')': the fields start after the last ')'.
        var close = text.LastIndexOf(')');
        if (close < 0 || close + 2 > text.Length) return null;
        var f = text[(close + 2)..].Split(' ');
        if (f.Length < 20) return null;
        // f[0] is field 3.
        static ulong U(string s) => ulong.Parse(s, CultureInfo.InvariantCulture);
        return new ProcStat(f[0][0], U(f[11]), U(f[12]), U(f[19]), int.Parse(f[1], CultureInfo.InvariantCulture));
    }

    /// <summary>True if the main thread of <paramref name="pid"/> has a child process now
    /// (/proc/PID/task/PID/children, CONFIG_PROC_CHILDREN); false if it has none or cannot be read.</summary>
    public static bool HasChildren(int pid)
    {
        try { return File.ReadAllText($"/proc/{pid}/task/{pid}/children").Trim().Length > 0; }
        catch (IOException) { return false; }
        catch (UnauthorizedAccessException) { return false; }
    }

    /// <summary>True if pid is alive (not a zombie) and is the process that started at startTime.</summary>
    public static bool IsAlive(int pid, ulong startTime) =>
        pid > 0 && Stat(pid) is { } s && s.StartTime == startTime && s.State is not ('Z' or 'X');
}
