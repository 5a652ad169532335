using System.Text.Json;
using Hull.Api;
using Hull.Instances;
using Microsoft.Data.Sqlite;

namespace Hull.Daemon;

/// <summary>An instance row.</summary>
public sealed class InstanceRecord
{
    public string Name = "";
    public string Type = InstanceTypes.Container;
    /// <summary>The image as the user named it (alias or fingerprint).</summary>
    public string Image = "";
    public string ImageFingerprint = "";
    public Dictionary<string, string> Config = [];
    public Dictionary<string, Dictionary<string, string>> Devices = [];
    public List<string> Profiles = [];
    public InstanceState State = InstanceState.Stopped;
    public DateTimeOffset Created;
    public DateTimeOffset? LastUsed;
    /// <summary>An engine call in progress when the row was written. Crash recovery reads it.</summary>
    public PendingOp? Pending;
    public int? Pid;
    public int? LastExitCode;
    public string? StatusMessage;
}

/// <summary>
/// The engine call in progress when an instance or snapshot row was written (crash recovery finishes or undoes it).
/// Stored as its word (<see cref="PendingOps.Word"/>).
/// </summary>
public enum PendingOp { Create, Delete, Start, Stop, Restore, MigrateIn }

public static class PendingOps
{
    public static string Word(this PendingOp p) => p switch
    {
        PendingOp.Create => "create",
        PendingOp.Delete => "delete",
        PendingOp.Start => "start",
        PendingOp.Stop => "stop",
        PendingOp.Restore => "restore",
        _ => "migrate-in",
    };

    public static PendingOp Parse(string word) => word switch
    {
        "create" => PendingOp.Create,
        "delete" => PendingOp.Delete,
        "start" => PendingOp.Start,
        "stop" => PendingOp.Stop,
        "restore" => PendingOp.Restore,
        "migrate-in" => PendingOp.MigrateIn,
        _ => throw new InvalidOperationException($"the store holds an unknown pending operation '{word}': " +
            "this hulld is older than the one that wrote it; run the newer hulld"),
    };
}

public sealed class ProfileRecord
{
    public string Name = "";
    public string Description = "";
    public Dictionary<string, string> Config = [];
    public Dictionary<string, Dictionary<string, string>> Devices = [];
}

/// <summary>A managed network: its name (the bridge's), description and config (Incus's keys).</summary>
public sealed class NetworkRecord
{
    public string Name = "";
    public string Description = "";
    public Dictionary<string, string> Config = [];
}

public sealed class ImageRecord
{
    public string Fingerprint = "";
    public string Type = InstanceTypes.Container;
    public long Size;
    public DateTimeOffset Created;
    public string Description = "";
    public bool Builtin;
}

/// <summary>
/// hulld's state in SQLite: WAL, synchronous=FULL, numbered migrations (PRAGMA user_version). One connection,
/// serialized by a lock: every call is a short transaction.
/// </summary>
public sealed class Store : IDisposable
{
    readonly SqliteConnection _db;
    readonly Lock _lock = new();

    /// <summary>Raised after a write to an instance (its name) or to a profile (null: any instance's expanded view
    /// may have changed), once the write has committed.</summary>
    public event Action<string?>? InstanceChanged;

    /// <summary>The schema, one migration a step; never edit a shipped step, add a new one.</summary>
    static readonly string[] Migrations =
    [
        // 1: instances, profiles, snapshots, images, aliases; the default profile.
        """
        CREATE TABLE instances (
            name TEXT PRIMARY KEY NOT NULL,
            type TEXT NOT NULL,
            image TEXT NOT NULL,
            image_fingerprint TEXT NOT NULL,
            config TEXT NOT NULL,
            devices TEXT NOT NULL,
            profiles TEXT NOT NULL,
            state TEXT NOT NULL,
            created INTEGER NOT NULL,
            last_used INTEGER,
            pending TEXT,
            pid INTEGER,
            last_exit_code INTEGER,
            status_message TEXT
        );
        CREATE TABLE profiles (
            name TEXT PRIMARY KEY NOT NULL,
            description TEXT NOT NULL,
            config TEXT NOT NULL,
            devices TEXT NOT NULL
        );
        INSERT INTO profiles (name, description, config, devices) VALUES ('default', 'Default profile', '{}', '{}');
        CREATE TABLE snapshots (
            instance TEXT NOT NULL REFERENCES instances(name) ON DELETE CASCADE ON UPDATE CASCADE,
            name TEXT NOT NULL,
            created INTEGER NOT NULL,
            config TEXT NOT NULL,
            devices TEXT NOT NULL,
            profiles TEXT NOT NULL,
            pending TEXT,
            PRIMARY KEY (instance, name)
        );
        CREATE TABLE images (
            fingerprint TEXT PRIMARY KEY NOT NULL,
            type TEXT NOT NULL,
            size INTEGER NOT NULL,
            created INTEGER NOT NULL,
            description TEXT NOT NULL,
            builtin INTEGER NOT NULL
        );
        CREATE TABLE image_aliases (
            name TEXT NOT NULL,
            type TEXT NOT NULL,
            fingerprint TEXT NOT NULL REFERENCES images(fingerprint) ON DELETE CASCADE,
            PRIMARY KEY (name, type)
        );
        """,
        // 2: daemon counters that survive restarts.
        """
        CREATE TABLE counters (name TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL);
        """,
        // 3: managed networks (the default one, hullbr0, is made by hulld at its first start with this step, not
        // here: its subnet is chosen against the host's routes).
        """
        CREATE TABLE networks (
            name TEXT PRIMARY KEY NOT NULL,
            description TEXT NOT NULL,
            config TEXT NOT NULL
        );
        """,
    ];

    public int SchemaVersion { get; private set; }

    /// <summary>
    /// Room kept on the state disk for the calls that must work when it is full (stop, delete, recording an exit):
    /// a file of this size beside the database, given back when the disk is full during such a call, made again at
    /// start and once the disk has room.
    /// </summary>
    public const long ReserveBytes = 8 << 20;
    const int SqliteFull = 13;
    readonly string _dir;
    readonly string _reserve;
    static readonly AsyncLocal<bool> EssentialCall = new();

    public Store(string path)
    {
        _dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        _reserve = path + ".reserve";
        _db = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = path, Pooling = false }.ToString());
        _db.Open();
        Exec("PRAGMA journal_mode=WAL");
        Exec("PRAGMA synchronous=FULL");
        Exec("PRAGMA foreign_keys=ON");
        Exec("PRAGMA busy_timeout=5000");
        Migrate();
        EnsureReserve();
    }

    /// <summary>
    /// Marks the calls made until the result is disposed (in this async flow) as ones that must work on a full disk:
    /// if the state disk is (nearly) full the reserve is given back first, and a write that still finds it full is
    /// retried once after that.
    /// </summary>
    public IDisposable Essential()
    {
        var outer = EssentialCall.Value;
        EssentialCall.Value = true;
        if (FreeBytes() < ReserveBytes) ReleaseReserve();
        return new Restore(() => EssentialCall.Value = outer);
    }

    sealed class Restore(Action a) : IDisposable { public void Dispose() => a(); }

    long FreeBytes()
    {
        try { return new DriveInfo(_dir).AvailableFreeSpace; } catch (IOException) { return long.MaxValue; }
    }

    bool ReleaseReserve()
    {
        if (!File.Exists(_reserve)) return false;
        File.Delete(_reserve);
        return true;
    }

    /// <summary>Makes the reserve file if it is missing and the disk has room for it and as much again.</summary>
    void EnsureReserve()
    {
        if (File.Exists(_reserve) || FreeBytes() < 2 * ReserveBytes) return;
        var tmp = _reserve + ".tmp";
        try
        {
            using (var f = new FileStream(tmp, FileMode.Create, FileAccess.Write))
            {
                var zeros = new byte[1 << 20];
                for (long n = 0; n < ReserveBytes; n += zeros.Length) f.Write(zeros);
                f.Flush(true);
            }
            File.Move(tmp, _reserve);
        }
        catch (IOException) { try { File.Delete(tmp); } catch (IOException) { } }
    }

    static InstanceException DiskFull(string dir, Exception e) =>
        new($"the disk holding hulld's state ({dir}) is full ({e.Message}): free some space and retry", 507);

    int Run(SqliteCommand cmd) => Run(cmd, c => c.ExecuteNonQuery());

    /// <summary>Runs a write; a full disk is a 507 (after giving back the reserve once, for an essential
    /// call).</summary>
    T Run<T>(SqliteCommand cmd, Func<SqliteCommand, T> exec)
    {
        try
        {
            var r = exec(cmd);
            if (!EssentialCall.Value && !File.Exists(_reserve)) EnsureReserve();
            return r;
        }
        catch (SqliteException e) when (e.SqliteErrorCode == SqliteFull)
        {
            if (!EssentialCall.Value || !ReleaseReserve()) throw DiskFull(_dir, e);
            try { return exec(cmd); }
            catch (SqliteException e2) when (e2.SqliteErrorCode == SqliteFull) { throw DiskFull(_dir, e2); }
        }
    }

    void Migrate()
    {
        var version = Convert.ToInt32(Scalar("PRAGMA user_version"));
        if (version > Migrations.Length)
            throw new InvalidOperationException($"the state database has schema version {version}, newer than this " +
                $"hulld knows ({Migrations.Length}): run a newer hulld");
        for (var v = version; v < Migrations.Length; v++)
        {
            using var tx = _db.BeginTransaction();
            using (var cmd = _db.CreateCommand())
            {
                cmd.Transaction = tx;
                cmd.CommandText = Migrations[v] + $"\nPRAGMA user_version = {v + 1};";
                Run(cmd);
            }
            tx.Commit();
        }
        SchemaVersion = Migrations.Length;
    }

    void Exec(string sql)
    {
        using var cmd = _db.CreateCommand();
        cmd.CommandText = sql;
        cmd.ExecuteNonQuery();
    }

    object? Scalar(string sql)
    {
        using var cmd = _db.CreateCommand();
        cmd.CommandText = sql;
        return cmd.ExecuteScalar();
    }

    SqliteCommand Cmd(string sql, params (string, object?)[] args)
    {
        var cmd = _db.CreateCommand();
        cmd.CommandText = sql;
        foreach (var (n, v) in args) cmd.Parameters.AddWithValue(n, v ?? DBNull.Value);
        return cmd;
    }

    static string J(Dictionary<string, string> d) =>
        JsonSerializer.Serialize(d, HullJson.Default.DictionaryStringString);
    static string J(Dictionary<string, Dictionary<string, string>> d) =>
        JsonSerializer.Serialize(d, HullJson.Default.DictionaryStringDictionaryStringString);
    static string J(List<string> d) => JsonSerializer.Serialize(d, HullJson.Default.ListString);
    static Dictionary<string, string> Cfg(string s) =>
        JsonSerializer.Deserialize(s, HullJson.Default.DictionaryStringString) ?? [];
    static Dictionary<string, Dictionary<string,
        string>> Dev(string s) => JsonSerializer.Deserialize(s, HullJson.Default.DictionaryStringDictionaryStringString)
        ?? [];
    static List<string> Lst(string s) => JsonSerializer.Deserialize(s, HullJson.Default.ListString) ?? [];
    static long T(DateTimeOffset t) => t.ToUnixTimeMilliseconds();
    static DateTimeOffset T(long ms) => DateTimeOffset.FromUnixTimeMilliseconds(ms);

    // ---- instances ----

    const string InstanceCols = "name, type, image, image_fingerprint, config, devices, profiles, state, created, " +
        "last_used, pending, pid, last_exit_code, status_message";

    static InstanceRecord ReadInstance(SqliteDataReader r) => new()
    {
        Name = r.GetString(0), Type = r.GetString(1), Image = r.GetString(2), ImageFingerprint = r.GetString(3),
        Config = Cfg(r.GetString(4)), Devices = Dev(r.GetString(5)), Profiles = Lst(r.GetString(6)),
        State = InstanceStates.Parse(r.GetString(7)),
        Created = T(r.GetInt64(8)), LastUsed = r.IsDBNull(9) ? null : T(r.GetInt64(9)),
        Pending = r.IsDBNull(10) ? null : PendingOps.Parse(r.GetString(10)),
        Pid = r.IsDBNull(11) ? null : r.GetInt32(11), LastExitCode = r.IsDBNull(12) ? null : r.GetInt32(12),
        StatusMessage = r.IsDBNull(13) ? null : r.GetString(13),
    };

    public List<InstanceRecord> ListInstances()
    {
        lock (_lock)
        {
            using var cmd = Cmd($"SELECT {InstanceCols} FROM instances ORDER BY name");
            using var r = cmd.ExecuteReader();
            var list = new List<InstanceRecord>();
            while (r.Read()) list.Add(ReadInstance(r));
            return list;
        }
    }

    public InstanceRecord? GetInstance(string name)
    {
        lock (_lock)
        {
            using var cmd = Cmd($"SELECT {InstanceCols} FROM instances WHERE name = $n", ("$n", name));
            using var r = cmd.ExecuteReader();
            return r.Read() ? ReadInstance(r) : null;
        }
    }

    /// <summary>Inserts a new instance; false if the name is taken.</summary>
    public bool InsertInstance(InstanceRecord i)
    {
        bool inserted;
        lock (_lock)
        {
            using var cmd = Cmd($"INSERT OR IGNORE INTO instances ({InstanceCols}) VALUES " +
                "($n,$t,$i,$f,$c,$d,$p,$s,$cr,$lu,$pe,$pid,$ec,$sm)",
                ("$n", i.Name), ("$t", i.Type), ("$i", i.Image), ("$f", i.ImageFingerprint), ("$c", J(i.Config)),
                ("$d", J(i.Devices)),
                ("$p", J(i.Profiles)), ("$s", i.State.ToWire()), ("$cr", T(i.Created)),
                ("$lu", i.LastUsed is { } lu ? T(lu) : null),
                ("$pe", i.Pending?.Word()), ("$pid", i.Pid), ("$ec", i.LastExitCode), ("$sm", i.StatusMessage));
            inserted = Run(cmd) == 1;
        }
        if (inserted) InstanceChanged?.Invoke(i.Name);
        return inserted;
    }

    public void UpdateInstance(InstanceRecord i)
    {
        lock (_lock)
        {
            using var cmd = Cmd("UPDATE instances SET type=$t, image=$i, image_fingerprint=$f, config=$c, " +
                "devices=$d, profiles=$p, state=$s, last_used=$lu, pending=$pe, pid=$pid, last_exit_code=$ec, " +
                "status_message=$sm WHERE name=$n",
                ("$n", i.Name), ("$t", i.Type), ("$i", i.Image), ("$f", i.ImageFingerprint), ("$c", J(i.Config)),
                ("$d", J(i.Devices)),
                ("$p", J(i.Profiles)), ("$s", i.State.ToWire()), ("$lu", i.LastUsed is { } lu ? T(lu) : null),
                ("$pe", i.Pending?.Word()), ("$pid", i.Pid), ("$ec", i.LastExitCode), ("$sm", i.StatusMessage));
            if (Run(cmd) != 1) throw new InvalidOperationException($"instance {i.Name} vanished from the store");
        }
        InstanceChanged?.Invoke(i.Name);
    }

    public bool RenameInstance(string from, string to)
    {
        bool renamed;
        lock (_lock)
        {
            using var cmd = Cmd("UPDATE OR IGNORE instances SET name=$to WHERE name=$from", ("$from", from),
                ("$to", to));
            renamed = Run(cmd) == 1;
        }
        InstanceChanged?.Invoke(from);
        InstanceChanged?.Invoke(to);
        return renamed;
    }

    public void DeleteInstance(string name)
    {
        lock (_lock)
        {
            using var cmd = Cmd("DELETE FROM instances WHERE name=$n", ("$n", name));
            Run(cmd);
        }
        InstanceChanged?.Invoke(name);
    }

    // ---- snapshots ----

    public List<Snapshot> ListSnapshots(string instance)
    {
        lock (_lock)
        {
            using var cmd = Cmd("SELECT name, created, config, devices, profiles FROM snapshots WHERE instance=$i " +
                "AND pending IS NULL ORDER BY created, name", ("$i", instance));
            using var r = cmd.ExecuteReader();
            var list = new List<Snapshot>();
            while (r.Read())
                list.Add(new Snapshot
                {
                    Instance = instance, Name = r.GetString(0), CreatedAt = T(r.GetInt64(1)),
                    Config = Cfg(r.GetString(2)),
                    Devices = Dev(r.GetString(3)), Profiles = Lst(r.GetString(4)),
                });
            return list;
        }
    }

    /// <summary>Snapshot rows whose engine call did not finish (crash recovery).</summary>
    public List<(string Instance, string Name, PendingOp Pending)> PendingSnapshots()
    {
        lock (_lock)
        {
            using var cmd = Cmd("SELECT instance, name, pending FROM snapshots WHERE pending IS NOT NULL");
            using var r = cmd.ExecuteReader();
            var list = new List<(string, string, PendingOp)>();
            while (r.Read()) list.Add((r.GetString(0), r.GetString(1), PendingOps.Parse(r.GetString(2))));
            return list;
        }
    }

    public bool InsertSnapshot(Snapshot s, PendingOp? pending)
    {
        lock (_lock)
        {
            using var cmd = Cmd("INSERT OR IGNORE INTO snapshots (instance, name, created, config, devices, " +
                "profiles, pending) VALUES ($i,$n,$c,$cf,$d,$p,$pe)",
                ("$i", s.Instance), ("$n", s.Name), ("$c", T(s.CreatedAt)), ("$cf", J(s.Config)), ("$d", J(s.Devices)),
                    ("$p", J(s.Profiles)), ("$pe", pending?.Word()));
            return Run(cmd) == 1;
        }
    }

    public void SetSnapshotPending(string instance, string name, PendingOp? pending)
    {
        lock (_lock)
        {
            using var cmd = Cmd("UPDATE snapshots SET pending=$p WHERE instance=$i AND name=$n", ("$i", instance),
                ("$n", name), ("$p", pending?.Word()));
            Run(cmd);
        }
    }

    public void DeleteSnapshot(string instance, string name)
    {
        lock (_lock)
        {
            using var cmd = Cmd("DELETE FROM snapshots WHERE instance=$i AND name=$n", ("$i", instance), ("$n", name));
            Run(cmd);
        }
    }

    // ---- profiles ----

    public List<ProfileRecord> ListProfiles()
    {
        lock (_lock)
        {
            using var cmd = Cmd("SELECT name, description, config, devices FROM profiles ORDER BY name");
            using var r = cmd.ExecuteReader();
            var list = new List<ProfileRecord>();
            while (r.Read()) list.Add(new ProfileRecord { Name = r.GetString(0), Description = r.GetString(1),
                Config = Cfg(r.GetString(2)), Devices = Dev(r.GetString(3)) });
            return list;
        }
    }

    public ProfileRecord? GetProfile(string name) => ListProfiles().FirstOrDefault(p => p.Name == name);

    public bool InsertProfile(ProfileRecord p)
    {
        bool inserted;
        lock (_lock)
        {
            using var cmd = Cmd("INSERT OR IGNORE INTO profiles (name, description, config, devices) VALUES " +
                "($n,$de,$c,$d)",
                ("$n", p.Name), ("$de", p.Description), ("$c", J(p.Config)), ("$d", J(p.Devices)));
            inserted = Run(cmd) == 1;
        }
        InstanceChanged?.Invoke(null);
        return inserted;
    }

    public void UpdateProfile(ProfileRecord p)
    {
        lock (_lock)
        {
            using var cmd = Cmd("UPDATE profiles SET description=$de, config=$c, devices=$d WHERE name=$n",
                ("$n", p.Name), ("$de", p.Description), ("$c", J(p.Config)), ("$d", J(p.Devices)));
            Run(cmd);
        }
        InstanceChanged?.Invoke(null);
    }

    public void DeleteProfile(string name)
    {
        lock (_lock)
        {
            using var cmd = Cmd("DELETE FROM profiles WHERE name=$n", ("$n", name));
            Run(cmd);
        }
        InstanceChanged?.Invoke(null);
    }

    // ---- networks ----

    public List<NetworkRecord> ListNetworks()
    {
        lock (_lock)
        {
            using var cmd = Cmd("SELECT name, description, config FROM networks ORDER BY name");
            using var r = cmd.ExecuteReader();
            var list = new List<NetworkRecord>();
            while (r.Read()) list.Add(new NetworkRecord { Name = r.GetString(0), Description = r.GetString(1),
                Config = Cfg(r.GetString(2)) });
            return list;
        }
    }

    public NetworkRecord? GetNetwork(string name) => ListNetworks().FirstOrDefault(n => n.Name == name);

    public bool InsertNetwork(NetworkRecord n)
    {
        lock (_lock)
        {
            using var cmd = Cmd("INSERT OR IGNORE INTO networks (name, description, config) VALUES ($n,$de,$c)",
                ("$n", n.Name), ("$de", n.Description), ("$c", J(n.Config)));
            return Run(cmd) == 1;
        }
    }

    public void UpdateNetwork(NetworkRecord n)
    {
        lock (_lock)
        {
            using var cmd = Cmd("UPDATE networks SET description=$de, config=$c WHERE name=$n",
                ("$n", n.Name), ("$de", n.Description), ("$c", J(n.Config)));
            Run(cmd);
        }
    }

    public void DeleteNetwork(string name)
    {
        lock (_lock)
        {
            using var cmd = Cmd("DELETE FROM networks WHERE name=$n", ("$n", name));
            Run(cmd);
        }
    }

    // ---- images ----

    public List<ImageRecord> ListImages()
    {
        lock (_lock)
        {
            using var cmd = Cmd("SELECT fingerprint, type, size, created, description, builtin FROM images ORDER BY " +
                "created");
            using var r = cmd.ExecuteReader();
            var list = new List<ImageRecord>();
            while (r.Read())
                list.Add(new ImageRecord { Fingerprint = r.GetString(0), Type = r.GetString(1), Size = r.GetInt64(2),
                    Created = T(r.GetInt64(3)), Description = r.GetString(4), Builtin = r.GetInt64(5) != 0 });
            return list;
        }
    }

    public bool InsertImage(ImageRecord i)
    {
        lock (_lock)
        {
            using var cmd = Cmd("INSERT OR IGNORE INTO images (fingerprint, type, size, created, description, " +
                "builtin) VALUES ($f,$t,$s,$c,$d,$b)",
                ("$f", i.Fingerprint), ("$t", i.Type), ("$s", i.Size), ("$c", T(i.Created)), ("$d", i.Description),
                    ("$b", i.Builtin ? 1 : 0));
            return Run(cmd) == 1;
        }
    }

    public void DeleteImage(string fp)
    {
        lock (_lock)
        {
            using var cmd = Cmd("DELETE FROM images WHERE fingerprint=$f", ("$f", fp));
            Run(cmd);
        }
    }

    public List<(string Name, string Type, string Fingerprint)> ListAliases()
    {
        lock (_lock)
        {
            using var cmd = Cmd("SELECT name, type, fingerprint FROM image_aliases ORDER BY name, type");
            using var r = cmd.ExecuteReader();
            var list = new List<(string, string, string)>();
            while (r.Read()) list.Add((r.GetString(0), r.GetString(1), r.GetString(2)));
            return list;
        }
    }

    /// <summary>Points an alias (per image type) at an image.</summary>
    public void SetAlias(string name, string type, string fp)
    {
        lock (_lock)
        {
            using var cmd = Cmd("INSERT INTO image_aliases (name, type, fingerprint) VALUES ($n,$t,$f) ON " +
                "CONFLICT(name, type) DO UPDATE SET fingerprint=$f", ("$n", name), ("$t", type), ("$f", fp));
            Run(cmd);
        }
    }

    public int DeleteAlias(string name)
    {
        lock (_lock)
        {
            using var cmd = Cmd("DELETE FROM image_aliases WHERE name=$n", ("$n", name));
            return Run(cmd);
        }
    }

    // ---- counters ----

    public long AddCounter(string name, long delta)
    {
        lock (_lock)
        {
            using var cmd = Cmd("INSERT INTO counters (name, value) VALUES ($n,$d) ON CONFLICT(name) DO UPDATE SET " +
                "value=value+$d RETURNING value", ("$n", name), ("$d", delta));
            return Convert.ToInt64(Run(cmd, c => c.ExecuteScalar()));
        }
    }

    public Dictionary<string, long> Counters()
    {
        lock (_lock)
        {
            using var cmd = Cmd("SELECT name, value FROM counters");
            using var r = cmd.ExecuteReader();
            var d = new Dictionary<string, long>();
            while (r.Read()) d[r.GetString(0)] = r.GetInt64(1);
            return d;
        }
    }

    public void Dispose() => _db.Dispose();
}
