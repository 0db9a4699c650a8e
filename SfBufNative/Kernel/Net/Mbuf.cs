namespace Native.SfBufNative.Kernel;

/// <summary>The kind of an mbuf's external storage (<c>ext_type</c>).</summary>
public enum MbufExtType
{
    /// <summary>No external storage.</summary>
    None,

    /// <summary><c>EXT_CLUSTER</c>: a cluster of <see cref="MbufClusters.MCLBYTES"/> bytes from the socket layer's cluster zone.</summary>
    Cluster,

    /// <summary><c>EXT_SFBUF</c>: a file page mapped by an sf_buf (sendfile); read-only.</summary>
    SfBuf,
}

/// <summary>An mbuf's external-storage free routine (<c>ext_free</c>); it gets the mbuf being freed.</summary>
public delegate void MbufExtFree(Mbuf m);

/// <summary>
/// An mbuf (<c>struct mbuf</c>) with external storage: the payload is <see cref="Length"/> bytes
/// at kernel virtual address <see cref="Data"/> (<c>m_data</c>, <c>m_len</c>), inside external
/// storage (<c>m_ext</c>) that a free routine releases when the mbuf is freed. The mbuf itself is
/// a managed kernel object; only the payload lives in simulated memory, so whoever reads it (the
/// NIC) goes through a mapping.
/// </summary>
public sealed class Mbuf
{
    private readonly MbufExtFree _extFree;
    private int _freed;

    private Mbuf(ulong extBuf, int extSize, int offset, int length, MbufExtType type, MbufExtFree free, object? arg, SfBuf sf, bool readOnly)
    {
        ExtBuf = extBuf;
        ExtSize = extSize;
        Data = extBuf + (ulong)offset;
        Length = length;
        ExtType = type;
        _extFree = free;
        ExtArg = arg;
        SfBuf = sf;
        IsReadOnly = readOnly;
    }

    /// <summary><c>m_data</c>: kernel virtual address of the first payload byte.</summary>
    public ulong Data { get; }

    /// <summary><c>m_len</c>: payload bytes.</summary>
    public int Length { get; }

    /// <summary><c>ext_type</c>.</summary>
    public MbufExtType ExtType { get; }

    /// <summary><c>ext_buf</c>: kernel virtual address of the external storage.</summary>
    public ulong ExtBuf { get; }

    /// <summary><c>ext_size</c>: bytes of external storage.</summary>
    public int ExtSize { get; }

    /// <summary><c>ext_args</c>: the free routine's argument.</summary>
    public object? ExtArg { get; }

    /// <summary>The sf_buf that maps the storage, for <see cref="MbufExtType.SfBuf"/>; otherwise none.</summary>
    public SfBuf SfBuf { get; }

    /// <summary><c>M_RDONLY</c>: the storage must not be written (a file page).</summary>
    public bool IsReadOnly { get; }

    /// <summary>True once <see cref="Free"/> has run.</summary>
    public bool IsFreed => Volatile.Read(ref _freed) != 0;

    /// <summary>
    /// <c>m_get</c> + <c>m_extadd</c>: an mbuf whose payload is <paramref name="length"/> bytes at
    /// <paramref name="offset"/> in the external storage [<paramref name="extBuf"/>,
    /// +<paramref name="extSize"/>), released by <paramref name="free"/> when the mbuf is freed.
    /// </summary>
    public static Mbuf ExtAdd(
        ulong extBuf,
        int extSize,
        int offset,
        int length,
        MbufExtType type,
        MbufExtFree free,
        object? arg = null,
        SfBuf sf = default,
        bool readOnly = false)
    {
        ArgumentNullException.ThrowIfNull(free);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(extSize);
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        if ((long)offset + length > extSize)
        {
            throw new ArgumentOutOfRangeException(nameof(length), $"{length} bytes at offset {offset} run past {extSize} bytes of external storage");
        }

        if (type == MbufExtType.None)
        {
            throw new ArgumentException("m_extadd needs a kind of external storage", nameof(type));
        }

        if (extBuf == 0)
        {
            throw new ArgumentException("external storage at address 0", nameof(extBuf));
        }

        return new Mbuf(extBuf, extSize, offset, length, type, free, arg, sf, readOnly);
    }

    /// <summary>
    /// <c>m_free</c>: runs the external free routine (for sendfile, <c>sf_buf_mext</c>). Must run on
    /// a kernel thread; a second free throws.
    /// </summary>
    public void Free()
    {
        if (Interlocked.Exchange(ref _freed, 1) != 0)
        {
            throw new InvalidOperationException($"double free of {this}");
        }

        _extFree(this);
    }

    /// <summary>Renders as <c>mbuf EXT_... len N at 0x...</c>.</summary>
    public override string ToString() => $"mbuf {ExtType} len {Length} at 0x{Data:x}";
}
