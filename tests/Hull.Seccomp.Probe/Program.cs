using System.Runtime.InteropServices;
using System.Text.Json;
using Hull.Linux;
using Hull.Seccomp;

// Hull.Seccomp.Probe: loads a seccomp filter into this process (PR_SET_NO_NEW_PRIVS, then seccomp with TSYNC) and
//   --  COMMAND ARGS...        execve's COMMAND (absolute path) under the filter, or
//   --call NAME [ARG...]       makes one raw x86_64 syscall under the filter and prints "result=R errno=E", or
//   --disassemble              prints the compiled program and loads nothing.
// The profile is a linux.seccomp JSON file, or "--default CAPS" for Hull's default profile (CAPS comma-separated).
// When the filter has a listener and the profile a listenerPath, the notify fd and the container process state are
// sent there first. Exit codes: 125 bad usage or profile, 126 load failed, 127 exec failed.
static unsafe class Probe
{
    static int Main(string[] args)
    {
        Hull.Oci.Seccomp profile;
        int i;
        try
        {
            if (args.Length >= 2 && args[0] == "--default")
            {
                profile = SeccompProfiles.DefaultProfile(args[1].Split(',', StringSplitOptions.RemoveEmptyEntries));
                i = 2;
            }
            else if (args.Length >= 1)
            {
                profile = JsonSerializer.Deserialize(File.ReadAllText(args[0]), SeccompJson.Default.Seccomp)
                    ?? throw new SeccompException($"{args[0]} is empty");
                i = 1;
            }
            else return Usage();
        }
        catch (Exception e) when (e is SeccompException or IOException or JsonException)
        {
            Console.Error.WriteLine($"probe: {e.Message}");
            return 125;
        }

        if (i < args.Length && args[i] == "--disassemble")
        {
            try { Console.Out.Write(SeccompCompiler.Compile(profile).Disassemble()); return 0; }
            catch (SeccompException e) { Console.Error.WriteLine($"probe: {e.Message}"); return 125; }
        }
        if (i >= args.Length) return Usage();
        var call = args[i] == "--call";
        if (!call && args[i] != "--") return Usage();
        var rest = args[(i + 1)..];
        if (rest.Length == 0) return Usage();

        SeccompProgram program;
        try { program = SeccompCompiler.Compile(profile).WithFlags(SeccompFilterFlags.Tsync); }
        catch (SeccompException e) { Console.Error.WriteLine($"probe: {e.Message}"); return 125; }

        // Prepare everything before the filter is in place: after it, only the calls under test should happen.
        uint nr = 0;
        var callArgs = new long[6];
        if (call)
        {
            if (!SeccompCompiler.TryGetSyscallNumber(SeccompArch.X86_64, rest[0],
                out nr)) { Console.Error.WriteLine($"probe: unknown syscall {rest[0]}"); return 125; }
            for (var k = 1; k < rest.Length && k <= 6; k++)
                callArgs[k - 1] = rest[k].StartsWith("0x", StringComparison.Ordinal)
                    ? (long)Convert.ToUInt64(rest[k][2..], 16) : long.Parse(rest[k]);
        }
        var argv = Native(rest);
        var env = Native(Environment.GetEnvironmentVariables().Cast<System.Collections.DictionaryEntry>().Select(e =>
            $"{e.Key}={e.Value}").ToArray());

        try
        {
            Sys.Prctl(PR.SET_NO_NEW_PRIVS, 1);
            using var notifyFd = SeccompLoader.Load(program);
            if (notifyFd is not null && !string.IsNullOrEmpty(profile.ListenerPath))
            {
                var pid = Libc.getpid();
                var state = new Hull.Oci.State { Id = "probe", Status = "creating", Pid = pid,
                    Bundle = Environment.CurrentDirectory };
                SeccompListener.Send(profile.ListenerPath, notifyFd,
                    SeccompListener.CreateState(state, pid, profile.ListenerMetadata));
            }
        }
        catch (Exception e) when (e is LinuxException or SeccompException)
        {
            Console.Error.WriteLine($"probe: {e.Message}");
            return 126;
        }

        if (call)
        {
            var r = Libc.syscall(nr, callArgs[0], callArgs[1], callArgs[2], callArgs[3], callArgs[4], callArgs[5]);
            var errno = r < 0 ? Marshal.GetLastPInvokeError() : 0;
            Console.Out.WriteLine($"result={r} errno={errno}");
            Console.Out.Flush();
            return 0;
        }
        Libc.execve(argv[0], argv, env);
        var err = Marshal.GetLastPInvokeError();
        Console.Error.WriteLine($"probe: execve {rest[0]}: {Errors.Describe(err)}");
        return 127;
    }

    static byte** Native(string[] items)
    {
        var p = (byte**)NativeMemory.AllocZeroed((nuint)(items.Length + 1), (nuint)sizeof(nint));
        for (var k = 0; k < items.Length; k++) p[k] = (byte*)Marshal.StringToCoTaskMemUTF8(items[k]);
        return p;
    }

    static int Usage()
    {
        Console.Error.WriteLine("usage: Hull.Seccomp.Probe (PROFILE.json | --default CAPS) (-- COMMAND ARGS... | " +
            "--call SYSCALL [ARGS...] | --disassemble)");
        return 125;
    }
}
