using Native.PageTable;

namespace Native.SfBufNative.Kernel;

/// <summary>Where a uio's buffer lives (<c>uio_segflg</c>).</summary>
public enum UioSegment
{
    /// <summary><c>UIO_USERSPACE</c>: a user address in the calling thread's address space.</summary>
    UserSpace,

    /// <summary><c>UIO_SYSSPACE</c>: a kernel virtual address.</summary>
    SystemSpace,
}

/// <summary>Which way a uio moves data (<c>uio_rw</c>).</summary>
public enum UioDirection
{
    /// <summary><c>UIO_READ</c>: from the kernel into the uio's buffer.</summary>
    Read,

    /// <summary><c>UIO_WRITE</c>: from the uio's buffer into the kernel.</summary>
    Write,
}

/// <summary>
/// A <c>struct uio</c> with one iovec: a buffer (user or kernel), how much is left, and the
/// file offset. Moving data advances it.
/// </summary>
public sealed class Uio
{
    /// <summary>Describes <paramref name="length"/> bytes at <paramref name="address"/>.</summary>
    public Uio(ulong address, long length, UioSegment segment, UioDirection direction, long offset = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        Base = address;
        Resid = length;
        Segment = segment;
        Direction = direction;
        Offset = offset;
    }

    /// <summary>Current buffer address (<c>iov_base</c>).</summary>
    public ulong Base { get; private set; }

    /// <summary>Bytes left (<c>uio_resid</c>).</summary>
    public long Resid { get; private set; }

    /// <summary>File offset (<c>uio_offset</c>).</summary>
    public long Offset { get; private set; }

    /// <summary>User or kernel buffer.</summary>
    public UioSegment Segment { get; }

    /// <summary>Read or write.</summary>
    public UioDirection Direction { get; }

    /// <summary>
    /// <c>uiomove</c>: moves up to <paramref name="length"/> bytes between kernel address
    /// <paramref name="kva"/> and the uio, on the calling CPU. Returns 0, or EFAULT for a bad
    /// user address (nothing is advanced past the fault).
    /// </summary>
    public int Move(Cpu cpu, ulong kva, long length)
    {
        ArgumentNullException.ThrowIfNull(cpu);
        long n = Math.Min(length, Resid);
        if (n <= 0)
        {
            return Errno.OK;
        }

        try
        {
            if (Direction == UioDirection.Read)
            {
                cpu.Copy(Base, kva, n);
            }
            else
            {
                cpu.Copy(kva, Base, n);
            }
        }
        catch (PageFaultException fault) when (Segment == UioSegment.UserSpace && VmLayout.IsUser(fault.Address))
        {
            return Errno.EFAULT;
        }

        Advance(n);
        return Errno.OK;
    }

    /// <summary>Consumes <paramref name="n"/> bytes without moving them.</summary>
    public void Advance(long n)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(n);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(n, Resid);
        Base += (ulong)n;
        Resid -= n;
        Offset += n;
    }
}
