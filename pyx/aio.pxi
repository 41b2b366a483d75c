# AIO worker pool: a request queue (mutex + condition variable), workers doing real
# pread/pwrite/fsync, completions signalled to the main loop through an eventfd.

cdef enum:                  # `op` of an aio record: index into traceformat.AIO_OPS
    KS_AIO_READ = 1
    KS_AIO_WRITE = 2
    KS_AIO_FSYNC = 3


cdef void aio_submit(ks_aio_pool *p, ks_aio_req *req, ks_thread *self) noexcept nogil:
    """Queue ``req``; a worker does the I/O and ``req.complete`` runs later in the main loop."""
    req.submit_thread = self.id
    req.next = NULL
    pthread_mutex_lock(&p.mutex)
    req.id = p.next_id
    p.next_id += 1
    p.submitted += 1
    req.submit_raw = ks_now()
    if p.q_tail != NULL:
        p.q_tail.next = req
    else:
        p.q_head = req
    p.q_tail = req
    pthread_cond_signal(&p.cond)
    pthread_mutex_unlock(&p.mutex)


cdef int64_t aio__do_io(ks_aio_req *req) noexcept nogil:
    cdef int64_t done = 0
    cdef long n
    if req.op == KS_AIO_FSYNC:
        return -errno if fdatasync(req.fd) != 0 else 0
    while done < req.length:
        if req.op == KS_AIO_READ:
            n = pread(req.fd, req.buf + done, req.length - done, req.offset + done)
        else:
            n = pwrite(req.fd, req.buf + done, req.length - done, req.offset + done)
        if n < 0:
            if errno == EINTR:
                continue
            return -errno
        if n == 0:
            # past the end of the image: a read fills zeros, a write cannot
            if req.op == KS_AIO_READ:
                memset(req.buf + done, 0, req.length - done)
                return req.length
            return -EIO
        done += n
    return done


cdef void *aio__worker(void *arg) noexcept nogil:
    cdef ks_aio_worker *a = <ks_aio_worker *>arg
    cdef ks_aio_pool *p = a.pool
    cdef ks_thread *self = &p.thr[a.index]
    cdef ks_aio_req *req
    cdef uint64_t one = 1
    cdef sigset_t mask
    sigfillset(&mask)
    pthread_sigmask(SIG_SETMASK, &mask, NULL)
    self.tid = ks_gettid()
    cpustat__begin(self)
    while True:
        pthread_mutex_lock(&p.mutex)
        while p.q_head == NULL and not p.stop:
            pthread_cond_wait(&p.cond, &p.mutex)
        req = p.q_head
        if req == NULL:
            pthread_mutex_unlock(&p.mutex)
            break           # stopping, and the queue is empty
        p.q_head = req.next
        if p.q_head == NULL:
            p.q_tail = NULL
        req.start_raw = ks_now()
        pthread_mutex_unlock(&p.mutex)
        req.worker_thread = self.id
        req.result = aio__do_io(req)
        req.done_raw = ks_now()
        pthread_mutex_lock(&p.mutex)
        req.next = p.done_head
        p.done_head = req
        pthread_mutex_unlock(&p.mutex)
        write(p.efd, &one, 8)
    cpustat__end(self)
    return NULL


cdef void aio_complete_all(ks_aio_pool *p, ks_thread *self) noexcept nogil:
    """Finish every request whose I/O is done, oldest first (main loop, BQL held)."""
    cdef ks_aio_req *lst
    cdef ks_aio_req *rev = NULL
    cdef ks_aio_req *nxt
    pthread_mutex_lock(&p.mutex)
    lst = p.done_head
    p.done_head = NULL
    pthread_mutex_unlock(&p.mutex)
    while lst != NULL:
        nxt = lst.next
        lst.next = rev
        rev = lst
        lst = nxt
    while rev != NULL:
        nxt = rev.next
        rev.complete(rev)
        p.completed += 1
        trace_aio(self.ring, <uint16_t>rev.worker_thread, rev.id, rev.op, <uint64_t>rev.offset,
                  <uint64_t>rev.length,
                  <int32_t>rev.result if rev.result >= -2147483647 else -2147483647,
                  rev.submit_thread, rev.submit_raw, rev.start_raw, rev.done_raw, ks_now())
        free(rev)
        rev = nxt


cdef void aio__completion_bh(void *opaque) noexcept nogil:
    cdef ks_aio_pool *p = <ks_aio_pool *>opaque
    aio_complete_all(p, &p.m.loop.thr)


cdef void aio__efd_read(void *opaque) noexcept nogil:
    cdef ks_aio_pool *p = <ks_aio_pool *>opaque
    cdef uint64_t v
    read(p.efd, &v, 8)
    bh_schedule(p.completion_bh, &p.m.loop.thr)


cdef int aio_init(ks_aio_pool *p, ks_machine *m, int nworkers) except -1:
    memset(p, 0, sizeof(ks_aio_pool))
    if nworkers < 1 or nworkers > KS_MAX_AIO:
        raise ValueError(f"--aio-threads {nworkers} out of range: use 1 .. {KS_MAX_AIO}")
    p.m = m
    p.nworkers = nworkers
    p.efd = -1
    pthread_mutex_init(&p.mutex, NULL)
    pthread_cond_init(&p.cond, NULL)
    p.efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)
    if p.efd < 0:
        raise_errno("eventfd for AIO completions")
    p.completion_bh = bh_new(m.loop, aio__completion_bh, p, 0)
    if p.completion_bh == NULL or loop_set_fd_handler(m.loop, p.efd, aio__efd_read, NULL, NULL, p) != 0:
        raise KvmscopeError("main loop tables full")
    return 0


cdef int aio_start(ks_aio_pool *p) except -1:
    cdef int i, rc
    for i in range(p.nworkers):
        p.worker_args[i].pool = p
        p.worker_args[i].index = i
        rc = pthread_create(&p.workers[i], NULL, aio__worker, &p.worker_args[i])
        if rc != 0:
            raise_errno(f"pthread_create aio{i}", rc)
        p.started[i] = 1
        pthread_setname_np(p.workers[i], f"aio{i}".encode())
    return 0


cdef void aio_stop_join(ks_aio_pool *p) noexcept nogil:
    """Let the workers finish the queue, then end them."""
    cdef int i
    pthread_mutex_lock(&p.mutex)
    p.stop = 1
    pthread_cond_broadcast(&p.cond)
    pthread_mutex_unlock(&p.mutex)
    for i in range(p.nworkers):
        if p.started[i]:
            pthread_join(p.workers[i], NULL)
            p.started[i] = 0


cdef void aio_destroy(ks_aio_pool *p) noexcept nogil:
    cdef ks_aio_req *r
    while p.q_head != NULL:
        r = p.q_head
        p.q_head = r.next
        free(r)
    while p.done_head != NULL:
        r = p.done_head
        p.done_head = r.next
        free(r)
    if p.efd >= 0:
        close(p.efd)
        p.efd = -1
