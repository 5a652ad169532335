using Hull.Linux;

[assembly: System.Runtime.Versioning.SupportedOSPlatform("linux")]

namespace Hull.Agent;

public static class Program
{
    public const string PortName = "org.hull.agent.0";
    public const uint VsockPortNumber = 1024;

    const string Usage = """
        usage: hull-agent [CHANNEL] [--simulate-power] [--verbose]
          The Hull guest agent. Runs as root in a VM guest and serves exec, files and readiness to the host.
        CHANNEL (default: the virtio-serial port org.hull.agent.0, else vsock port 1024, waiting for either):
          --serial PATH        a virtio-serial port device
          --vsock PORT         listen on an AF_VSOCK port
          --listen-unix PATH   listen on a unix socket, one host connection at a time (a stand-in for the port)
          --connect-unix PATH  connect to a unix socket, reconnecting when the host drops it
        hull-agent --exec-as UID:GID[:G1,G2...] -- PATH ARGV0 [ARGS...]
          internal: drop to that identity and exec PATH (used for execs that do not run as root)
        hull-agent --version
        """;

    public static int Main(string[] args)
    {
        if (args.Length > 0 && args[0] == "--exec-as") return ExecAs(args);
        if (args.Length > 0 && args[0] == "--version") { Console.WriteLine(
            $"hull-agent {AgentServer.Version}"); return 0; }
        if (Libc.getpid() == 1 && Environment.GetEnvironmentVariable(SupervisedVariable) != "1") return Supervise(args);
        Port? port = null;
        bool simulate = false, verbose = false;
        try
        {
            for (var i = 0; i < args.Length; i++)
            {
                string Value() => i + 1 < args.Length ? args[++i]
                    : throw new ArgumentException($"{args[i]} needs a value");
                switch (args[i])
                {
                    case "--serial": port = new SerialPort(Value()); break;
                    case "--vsock":
                        var v = Value();
                        port = uint.TryParse(v, out var n) ? new VsockPort(n)
                            : throw new ArgumentException($"--vsock: '{v}' is not a port number");
                        break;
                    case "--listen-unix": port = new UnixListenPort(Value()); break;
                    case "--connect-unix": port = new UnixConnectPort(Value()); break;
                    case "--simulate-power": simulate = true; break;
                    case "--verbose": verbose = true; break;
                    case "-h" or "--help": Console.WriteLine(Usage); return 0;
                    default: throw new ArgumentException($"unknown option '{args[i]}'");
                }
            }
        }
        catch (Exception e) when (e is ArgumentException or IOException or System.Net.Sockets.SocketException)
        {
            Console.Error.WriteLine($"hull-agent: {e.Message}\n{Usage}");
            return 2;
        }
        using var cts = new CancellationTokenSource();
        Console.CancelKeyPress += (_, e) => { e.Cancel = true; cts.Cancel(); };
        using var sigterm = System.Runtime.InteropServices.PosixSignalRegistration.Create(
            System.Runtime.InteropServices.PosixSignal.SIGTERM, c => { c.Cancel = true; cts.Cancel(); });
        port ??= FindChannel(cts.Token);
        if (port is null) return 0;
        using (port)
        {
            try
            {
                new AgentServer(port, new AgentOptions { SimulatePower = simulate, Verbose = verbose }).Run(cts.Token);
            }
            catch (LinuxException e)
            {
                AgentServer.Log($"{port.Describe}: {e.Message}");
                return 1;
            }
        }
        return 0;
    }

    const string SupervisedVariable = "HULL_AGENT_SUPERVISED";

    /// <summary>
    /// As pid 1 (the guest's /init exec'd the agent) the process stays a small supervisor and runs the agent as its
    /// child. The .NET runtime, when it is pid 1, reaps every child on SIGCHLD (waitpid(-1)), which is what an init
    /// must do for orphans but would steal the exit status of the agent's own execs. So the execs are never children
    /// of pid 1: they are children of the agent. If the agent dies, it is started again after a second. SIGTERM is
    /// passed to the agent, and the supervisor exits once it has.
    /// </summary>
    static int Supervise(string[] args)
    {
        var self = ExecSession.SelfCommand();
        var env = new List<string>();
        foreach (System.Collections.DictionaryEntry e in Environment.GetEnvironmentVariables()) env.Add(
            $"{e.Key}={e.Value}");
        env.Add($"{SupervisedVariable}=1");
        var stopping = false;
        SpawnedChild? current = null;
        using var sigterm = System.Runtime.InteropServices.PosixSignalRegistration.Create(
            System.Runtime.InteropServices.PosixSignal.SIGTERM, c =>
        {
            c.Cancel = true;
            stopping = true;
            if (current is { } ch) Libc.kill(ch.Pid, Signals.SIGTERM);
        });
        AgentServer.Log("running as pid 1: supervising the agent and reaping orphans");
        while (true)
        {
            try
            {
                using var child = Spawner.Spawn(new SpawnRequest { Path = self[0], Argv = [.. self, .. args],
                    Env = env });
                current = child;
                if (stopping) Libc.kill(child.Pid, Signals.SIGTERM);
                GuestSys.WaitPidfd(child.Pidfd);
                current = null;
            }
            catch (SpawnException e)
            {
                AgentServer.Log($"starting the agent: {e.Message}");
            }
            if (stopping) return 0;
            AgentServer.Log("the agent exited; starting it again in 1 s");
            Thread.Sleep(1000);
        }
    }

    /// <summary>Waits for the agent's channel: the modules that provide it may still be loading when /init starts
    /// us.</summary>
    static Port? FindChannel(CancellationToken ct)
    {
        var said = false;
        while (!ct.IsCancellationRequested)
        {
            if (SerialPort.Find(PortName) is { } dev) return new SerialPort(dev);
            if (File.Exists("/dev/vsock"))
            {
                try { return new VsockPort(VsockPortNumber); }
                catch (LinuxException e) { if (!said) AgentServer.Log($"vsock: {e.Message}"); }
            }
            if (!said) AgentServer.Log($"waiting for the virtio-serial port {PortName} or /dev/vsock");
            said = true;
            ct.WaitHandle.WaitOne(250);
        }
        return null;
    }

    /// <summary>hull-agent --exec-as UID:GID[:GROUPS] -- PATH ARGV...: drop privileges on this thread and
    /// exec.</summary>
    static int ExecAs(string[] args)
    {
        if (args.Length < 5 || args[2] != "--")
        {
            Console.Error.WriteLine("hull-agent: usage: hull-agent --exec-as UID:GID[:G1,G2...] -- PATH ARGV0 " +
                "[ARGS...]");
            return 127;
        }
        var ids = args[1].Split(':');
        if (ids.Length is < 2 or > 3 || !uint.TryParse(ids[0], out var uid) || !uint.TryParse(ids[1], out var gid))
        {
            Console.Error.WriteLine($"hull-agent: --exec-as: '{args[1]}' is not UID:GID[:GROUPS]");
            return 127;
        }
        var groups = new List<uint>();
        if (ids.Length == 3)
            foreach (var g in ids[2].Split(',', StringSplitOptions.RemoveEmptyEntries))
            {
                if (!uint.TryParse(g, out var gg)) { Console.Error.WriteLine(
                    $"hull-agent: --exec-as: bad group '{g}'"); return 127; }
                groups.Add(gg);
            }
        var env = new List<string>();
        foreach (System.Collections.DictionaryEntry e in Environment.GetEnvironmentVariables()) env.Add(
            $"{e.Key}={e.Value}");
        var (errno, step) = GuestSys.ExecAs(uid, gid, groups, args[3], args[4..], env);
        Console.Error.WriteLine($"hull-agent: exec as {uid}:{gid}: {step}: {Errors.Describe(errno)}");
        return errno == Errors.ENOENT ? 127 : 126;
    }
}
