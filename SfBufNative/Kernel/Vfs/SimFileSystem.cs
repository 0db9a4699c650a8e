namespace Native.SfBufNative.Kernel;

/// <summary>
/// The simulated file system: a flat namespace of files, each a <see cref="Vnode"/> backed by
/// a real host file (copied in by name at test time, e.g. <c>/bin/true</c>) or by given bytes.
/// </summary>
public sealed class SimFileSystem
{
    private readonly Dictionary<string, Vnode> _files = new(StringComparer.Ordinal);

    /// <summary>Adds a file whose contents are the host file at <paramref name="hostPath"/>.</summary>
    public Vnode AddHostFile(string name, string hostPath)
    {
        if (!File.Exists(hostPath))
        {
            throw new FileNotFoundException($"host file {hostPath} does not exist", hostPath);
        }

        return Add(new Vnode(name, Path.GetFullPath(hostPath), null));
    }

    /// <summary>Adds a file with the given contents.</summary>
    public Vnode AddFile(string name, byte[] contents)
    {
        ArgumentNullException.ThrowIfNull(contents);
        return Add(new Vnode(name, null, (byte[])contents.Clone()));
    }

    /// <summary>The file called <paramref name="name"/>, or null (ENOENT).</summary>
    public Vnode? Lookup(string name)
    {
        lock (_files)
        {
            return _files.GetValueOrDefault(name);
        }
    }

    private Vnode Add(Vnode vnode)
    {
        lock (_files)
        {
            if (!_files.TryAdd(vnode.Name, vnode))
            {
                throw new InvalidOperationException($"{vnode.Name} already exists");
            }
        }

        return vnode;
    }
}
