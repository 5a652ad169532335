using System.Text.Json;
using Hull.Containers;
using Hull.Linux;

namespace Hull.Oci.Cli;

/// <summary>Global state of one hull-oci invocation: runc's global flags and the engine they select.</summary>
public sealed class OciContext
{
    public string Root { get; init; } = "/run/hull-oci";
    public string? Log { get; init; }
    public string LogFormat { get; init; } = "text";
    public bool SystemdCgroup { get; init; }
    public bool Debug { get; init; }

    ContainerEngine? _engine;
    public ContainerEngine Engine => _engine ??=
        new ContainerEngine(new StateStore(Root), CgroupFactory.Create(SystemdCgroup))
    {
        ReExecSealedToJoinPidNamespace = true,
    };

    /// <summary>Reports an error on stderr and, with --log, in the log file (JSON lines with --log-format json, as
    /// containerd reads).</summary>
    public void Error(string message)
    {
        Console.Error.WriteLine($"hull-oci: {message}");
        WriteLog("error", message);
    }

    public void Warn(string message)
    {
        Console.Error.WriteLine($"hull-oci: warning: {message}");
        WriteLog("warning", message);
    }

    void WriteLog(string level, string message)
    {
        if (Log is null) return;
        try
        {
            var time = DateTime.UtcNow.ToString("yyyy-MM-ddTHH:mm:ss.fffffffZ");
            var line = LogFormat == "json"
                ? $"{{\"level\":\"{level}\",\"msg\":" +
                    $"{JsonSerializer.Serialize(message, OciCliJson.Default.String)},\"time\":\"{time}\"}}\n"
                : $"time=\"{time}\" level={level} msg=\"{message.Replace("\"", "\\\"")}\"\n";
            File.AppendAllText(Log, line);
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }
}

/// <summary>hull-oci: a runc-compatible command line over Hull's container engine.</summary>
public static class OciMain
{
    delegate int Verb(OciContext ctx, IReadOnlyList<string> args);

    static readonly (string Name, Verb Run, string Help)[] Verbs =
    [
        ("spec", SpecVerb.Run, "write a default config.json for a new bundle"),
        ("create", CreateVerb.Run, "create a container (its process waits for start)"),
        ("start", StartVerb.Run, "start the process of a created container"),
        ("run", RunVerb.Run, "create and start a container, waiting for it unless --detach"),
        ("state", StateVerb.Run, "print a container's state as JSON"),
        ("kill", KillVerb.Run, "send a signal to a container's process (or all its processes)"),
        ("delete", DeleteVerb.Run, "delete a stopped container (--force: any)"),
        ("exec", ExecVerb.Run, "run a new process in a running container"),
        ("list", ListVerb.Run, "list containers"),
        ("ps", PsVerb.Run, "list the processes of a container"),
        ("pause", PauseVerb.Run, "freeze every process of a container"),
        ("resume", ResumeVerb.Run, "thaw a paused container"),
        ("update", UpdateVerb.Run, "change a running container's resource limits"),
        ("events", EventsVerb.Run, "print a container's resource usage (--stats) or a stream of it"),
        ("features", FeaturesVerb.Run, "print what this runtime supports, as JSON"),
    ];

    public static int Run(IReadOnlyList<string> argv)
    {
        string root = "/run/hull-oci", logFormat = "text";
        string? log = null;
        bool systemd = false, debug = false;
        var i = 0;
        for (; i < argv.Count && argv[i].StartsWith('-'); i++)
        {
            var (name, value) = Split(argv[i]);
            string Next() => value ?? (i + 1 < argv.Count ? argv[++i]
                : throw new UsageException($"flag {name} needs a value"));
            switch (name)
            {
                case "--root": root = Next(); break;
                case "--log": log = Next(); break;
                case "--log-format": logFormat = Next(); break;
                case "--criu": Next(); break;
                case "--rootless": Next(); break;
                case "--systemd-cgroup": systemd = value is null or "true"; break;
                case "--debug": debug = true; break;
                case "-v" or "--version": Console.WriteLine($"hull-oci version {Version}\nspec: 1.2.0"); return 0;
                case "-h" or "--help": Usage(); return 0;
                default: Console.Error.WriteLine($"hull-oci: unknown global flag {name}"); return 2;
            }
        }
        var ctx = new OciContext { Root = root, Log = log, LogFormat = logFormat, SystemdCgroup = systemd,
            Debug = debug };
        if (i >= argv.Count) { Usage(); return 2; }
        var verbName = argv[i];
        var rest = argv.Skip(i + 1).ToList();
        var verb = Verbs.FirstOrDefault(v => v.Name == verbName);
        if (verb.Run is null) { ctx.Error($"unknown command \"{verbName}\" (hull-oci --help lists them)"); return 2; }
        if (rest.Contains("--help") || rest.Contains("-h")) { Console.WriteLine(
            $"hull-oci {verb.Name}: {verb.Help}\n{HelpText.For(verb.Name)}"); return 0; }
        try { return verb.Run(ctx, rest); }
        catch (UsageException e) { ctx.Error(e.Message); return 2; }
        catch (ContainerException e) { ctx.Error(e.Message); return e.ExitCode == 0 ? 1 : e.ExitCode; }
        catch (LinuxException e) { ctx.Error(e.Message); return 1; }
        catch (IOException e) { ctx.Error(e.Message); return 1; }
        catch (UnauthorizedAccessException e) { ctx.Error(e.Message); return 1; }
    }

    public const string Version = "0.1.0";

    static (string, string?) Split(string a)
    {
        var eq = a.IndexOf('=');
        return eq < 0 ? (a, null) : (a[..eq], a[(eq + 1)..]);
    }

    static void Usage()
    {
        Console.WriteLine("usage: hull-oci [--root DIR] [--log FILE] [--log-format text|json] [--systemd-cgroup] " +
            "COMMAND [ARGS]\n\nA runc-compatible OCI runtime (Hull's container engine).\n\nCommands:");
        foreach (var v in Verbs) Console.WriteLine($"  {v.Name,-10} {v.Help}");
    }
}

[System.Text.Json.Serialization.JsonSerializable(typeof(string))]
[System.Text.Json.Serialization.JsonSerializable(typeof(List<ListEntry>))]
[System.Text.Json.Serialization.JsonSerializable(typeof(List<int>))]
[System.Text.Json.Serialization.JsonSerializable(typeof(Features))]
[System.Text.Json.Serialization.JsonSerializable(typeof(LinuxFeatures))]
[System.Text.Json.Serialization.JsonSerializable(typeof(Hull.Oci.Resources))]
[System.Text.Json.Serialization.JsonSourceGenerationOptions(WriteIndented = true,
    DefaultIgnoreCondition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull)]
internal sealed partial class OciCliJson : System.Text.Json.Serialization.JsonSerializerContext;
