from course_utils.images import generate

for path in generate():
    print(path)
